"""Checkers for the invariants of a whole compiled step (3, 6 and 9 of docs/testing.md).

`check_replica_invariance` compiles the user's step twice (one replica, and N replicas under
the process's `MirroredStrategy`) and `check_phase_isolation` compiles the phases up to and
including the one under test; each compiled program is made once per builder or step and
reused for every Hypothesis example, so a property traces it only once. Every run starts
from the same snapshot of all variables.

Not here yet: accumulation (invariant 4) will be a checker of the same shape,
``check_accumulation(build_step, batch, micro_batches)``, built on `StepRunner`. Exact
resume (invariant 10) is `composeloop.testing.resume.check_exact_resume`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import numpy as np

from composeloop.step import Phase, Step
from composeloop.step.apply import build_apply
from composeloop.testing.harness import (
    Batch,
    StepRunner,
    batch_size,
    cached_runner,
    mirrored_strategy,
    split_batch,
    step_variables,
)
from composeloop.testing.violations import InvariantViolation, difference

REPLICA_RULE = (
    "N replicas on a global batch give the same update and metric states as 1 replica on the same batch, "
    "whatever the split (gradients are all-reduced before transforms; losses averaged over the global batch)"
)
ISOLATION_RULE = "a phase changes only its own variable group (and no other phase's optimizer)"


class _ReplicaPair:
    """The same step built twice, on one replica and on N, starting from equal weights."""

    def __init__(self, build_step: Callable[[], Step], replicas: int) -> None:
        strategy = mirrored_strategy(replicas)
        self.one = StepRunner(build_step())
        with strategy.scope():
            many_step = build_step()
        # Builders need not be seeded: the N-replica copy starts from the 1-replica snapshot.
        self.many = StepRunner(many_step, strategy, start=self.one.initial)


def _even_split(size: int, replicas: int) -> list[int]:
    return [size // replicas + (1 if i < size % replicas else 0) for i in range(replicas)]


def _compare_states(invariant: str, rule: str, context: str, expected: dict, actual: dict, rtol: float) -> None:
    for metric, fields in expected.items():
        for field, value in fields.items():
            gap = difference(value, actual[metric][field], rtol=rtol, atol=0.0)
            if gap is not None:
                raise InvariantViolation(invariant, f"{context}, metric '{metric}' state field '{field}' {gap}", rule)


def check_replica_invariance(
    build_step: Callable[[], Step],
    batch: Batch,
    split: Sequence[int] | None = None,
    *,
    replicas: int = 2,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    metric_rtol: float = 1e-6,
    at_step: int = 0,
) -> None:
    """Asserts invariants 3 and 9: one step on N replicas == one step on 1 replica.

    Args:
      build_step: builds the composed step (models, optimizers, phases) and returns it; it is
        called once outside and once inside the N-replica strategy's scope, then cached for
        the process, so pass the same function for every example. The N-replica copy starts
        from the 1-replica copy's weights.
      batch: the global batch (dict of arrays, at least one example).
      split: examples per replica (adding up to the batch size; zeros allowed); default even.
      replicas: N; the CPU must have been split into N logical devices before TensorFlow
        started (see `configure_cpu_replicas`).
      rtol: on the update of each variable (after - before). Replicas sum float32
        gradients in another order (about 1e-7 relative each).
      atol: covers one float32 ulp of a weight of size ~1, since the update is read back as a
        difference of weights.
      metric_rtol: on metric states (float64 sums of float32 per-example values).
      at_step: the global step the step runs as (its random seeds derive from it).

    A step that draws random numbers (dropout, GAN noise) draws them per replica, from a
    seed that includes the replica index, so it matches 1 replica only in distribution:
    check such a step with its randomness off.

    Raises:
      InvariantViolation: naming the variable or metric field that differs, and by how much.

    Example:
      >>> from composeloop.parts.recipes import classifier_step
      >>> def build_step():  # called once per replica count, inside that strategy's scope
      ...     net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      ...     return classifier_step(net, keras.optimizers.SGD(0.1))
      >>> check_replica_invariance(build_step, batch, split=[3, 5])
    """
    pair = cached_runner(("replicas", build_step, replicas), build_step, lambda: _ReplicaPair(build_step, replicas))
    size = batch_size(batch)
    sizes = list(split) if split is not None else _even_split(size, replicas)
    if len(sizes) != replicas:
        raise ValueError(f"split {sizes} must give one size per replica ({replicas})")
    one = pair.one.run([batch], at_step=at_step)
    many = pair.many.run(split_batch(batch, sizes), at_step=at_step)
    context = f"one step on {size} examples split {sizes} over {replicas} replicas vs 1 replica"
    invariant = "replica invariance (3, 9)"
    for name, initial, want, got in zip(pair.one.names, pair.one.initial, one["weights"], many["weights"], strict=True):
        gap = difference(want - initial, got - initial, rtol, atol)
        if gap is not None:
            raise InvariantViolation(invariant, f"{context}: the update of variable '{name}' {gap}", REPLICA_RULE)
    _compare_states(invariant, REPLICA_RULE, context, one["states"], many["states"], metric_rtol)


def _phase(step: Step, name: str) -> tuple[int, Phase]:
    for index, phase in enumerate(step.phases):
        if phase.name == name:
            return index, phase
    raise ValueError(f"step has no phase '{name}'; phases: {', '.join(p.name for p in step.phases)}")


def _prefix_runner(step: Step, count: int) -> StepRunner:
    """The step's first `count` phases, compiled once, snapshotting ALL the step's variables."""

    def make() -> StepRunner:
        prefix = attrs.evolve(step, phases=step.phases[:count])
        for phase in step.phases:  # every phase's optimizer variables must exist to be snapshot
            build_apply(phase.apply, step.variables(phase))
        return StepRunner(prefix, variables=step_variables(step))

    return cached_runner(("prefix", id(step), count), step, make)


def check_phase_isolation(
    step: Step, batch: Batch, phase: str, *, owns: Sequence[str] | None = None, at_step: int = 0
) -> None:
    """Asserts invariant 6: running phase `phase` changes no variable outside its own group.

    The phases before it run too (a phase may read their outputs); the check compares the
    phases before it alone with the phases before it followed by it, from one snapshot, so
    any change outside the group is the phase's own doing.

    Args:
      step: a composed step (compiled here once per step and phase).
      batch: one batch (dict of arrays).
      phase: the name of the phase under test.
      owns: the models whose variables the phase may change; default: its `trains`.
      at_step: the global step the step runs as (its random seeds derive from it).

    Raises:
      InvariantViolation: naming a variable of another model (or another phase's optimizer)
        that moved, and by how much.

    Example:
      >>> from keras.optimizers import Adam
      >>> from composeloop.parts.gan import gan_step
      >>> generator = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])  # latent 2 -> 4 features
      >>> discriminator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
      >>> step = gan_step(generator, discriminator, Adam(1e-3), Adam(1e-3), latent_dim=2)
      >>> check_phase_isolation(step, {"x": x}, "generator")
    """
    index, under_test = _phase(step, phase)
    owns = tuple(owns if owns is not None else under_test.trains)
    with_phase = _prefix_runner(step, index + 1)  # builds the optimizers: read their variables after
    mine = {id(v) for name in owns for v in step.models[name].weights}
    optimizer = getattr(under_test.apply, "optimizer", None)
    mine |= {id(v) for v in (optimizer.variables if optimizer is not None else ())}
    start = with_phase.initial
    after = with_phase.run([batch], at_step=at_step)["weights"]
    before = _prefix_runner(step, index).run([batch], start, at_step)["weights"] if index else start
    for variable, name, was, now in zip(with_phase.variables, with_phase.names, before, after, strict=True):
        if id(variable) in mine:
            continue
        gap = difference(np.asarray(was), np.asarray(now), rtol=0.0, atol=0.0)
        if gap is not None:
            raise InvariantViolation(
                "phase isolation (6)",
                f"phase '{phase}' (own models: {', '.join(owns)}) changed variable '{name}': {gap}",
                ISOLATION_RULE,
            )
