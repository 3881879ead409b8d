"""Checkers for the invariants of a whole compiled step (3, 4, 6 and 9 of docs/testing.md).

`check_replica_invariance` and `check_ema_replica_invariance` compile the user's step twice
(one replica, and N replicas under the process's `MirroredStrategy`), `check_accumulation`
twice (as given, and accumulating), and `check_phase_isolation` compiles the phases up to
and including the one under test; each compiled program is made once per builder or step
and reused for every Hypothesis example, so a property traces it only once. Every run
starts from the same snapshot of all variables (stage state such as accumulators and EMA
shadows included). Exact resume (invariant 10) runs the real loop: `resume.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import numpy as np

from composeloop.step import Phase, Step, ema_stages
from composeloop.step.accumulate import accumulated
from composeloop.step.apply import apply_variables, build_apply
from composeloop.step.groups import variable_path
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
ACCUMULATION_RULE = (
    "accumulating k micro-batches gives the update, optimizer state and metric states of one step on a batch "
    "holding all of them (losses averaged over the batch), and the first k - 1 micro-batches move nothing"
)
EMA_RULE = (
    "the moving average of the weights is computed once from all-reduced values, so after any number of steps "
    "N replicas hold the shadows (and weights) 1 replica holds"
)


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
    mine |= {id(v) for v in apply_variables(under_test.apply)}
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


def _labels(runner: StepRunner) -> list[str]:
    """Each variable's name; an EMA shadow is named after the variable it averages."""
    shadows = {
        id(shadow): f"EMA shadow of '{variable_path(variable)}'"
        for stage in ema_stages(runner.step)
        for shadow, variable in zip(stage.shadows, stage.owner, strict=True)
    }
    return [shadows.get(id(v), name) for v, name in zip(runner.variables, runner.names, strict=True)]


def check_ema_replica_invariance(
    build_step: Callable[[], Step],
    batches: Sequence[Batch],
    splits: Sequence[Sequence[int]] | None = None,
    *,
    replicas: int = 2,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Asserts that EMA shadows (and weights) after several steps are the same on N replicas as on 1.

    Args:
      build_step: builds a step with at least one `ema` apply stage; called and cached as
        for `check_replica_invariance` (the same pair of programs is shared with it).
      batches: the global batch of each step, in order.
      splits: examples per replica for each batch; default even.
      replicas: N.
      rtol: on each variable's change over the steps (float32 all-reduces sum in another
        order: about 1e-7 relative per step).
      atol: absolute slack on each variable's change.

    Raises:
      ValueError: the step holds no EMA stage.
      InvariantViolation: naming the shadow (by the variable it averages) or the variable
        that differs, and by how much.

    Example:
      >>> from composeloop.parts.recipes import classifier_step
      >>> from composeloop.step import ema
      >>> def sgd(gradients, variables):  # an apply stage of one's own: w -= 0.1 g
      ...     for g, v in zip(gradients, variables):
      ...         v.assign(v - 0.1 * g)
      >>> def build_step():  # an EMA of the weights around the apply stage
      ...     net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      ...     return classifier_step(net, None, apply=ema(sgd, 0.9))
      >>> check_ema_replica_invariance(build_step, [batch, batch], [[3, 5], [8, 0]])
    """
    pair = cached_runner(("replicas", build_step, replicas), build_step, lambda: _ReplicaPair(build_step, replicas))
    if not ema_stages(pair.one.step):
        raise ValueError("check_ema_replica_invariance: the step holds no ema stage; wrap an apply stage in ema()")
    sizes = [list(s) for s in splits] if splits is not None else [_even_split(batch_size(b), replicas) for b in batches]
    if len(sizes) != len(batches):
        raise ValueError(f"give one split per batch: {len(batches)} batches, {len(sizes)} splits")
    pair.one.restore()
    pair.many.restore()
    try:
        pair.one.train_steps([[batch] for batch in batches])
        pair.many.train_steps([split_batch(batch, split) for batch, split in zip(batches, sizes, strict=True)])
        one = [v.numpy() for v in pair.one.variables]
        many = [v.numpy() for v in pair.many.variables]
    finally:
        pair.one.restore()
        pair.many.restore()
    context = f"{len(batches)} steps split {sizes} over {replicas} replicas vs 1 replica"
    compared = list(zip(_labels(pair.one), pair.one.initial, one, many, strict=True))
    # The shadows first: a wrong update shows in both, and the shadow is what this checks.
    compared.sort(key=lambda item: not item[0].startswith("EMA shadow"))
    for name, initial, want, got in compared:
        gap = difference(want - initial, got - initial, rtol, atol)
        if gap is not None:
            what = f"{context}: the change of {name} {gap}"
            raise InvariantViolation("EMA replica invariance (3, 9)", what, EMA_RULE)


class _AccumulationPair:
    """The user's step, and the same step accumulating `every` micro-batches, from equal weights."""

    def __init__(self, build_step: Callable[[], Step], every: int) -> None:
        self.plain = StepRunner(build_step())
        step = build_step()
        self.accumulating = StepRunner(attrs.evolve(step, phases=[accumulated(p, every) for p in step.phases]))
        # The models' weights and the apply stages' state come first in both; the accumulator after.
        self.shared = len(step_variables(self.plain.step))
        self.accumulating.restore([*self.plain.initial[: self.shared], *self.accumulating.initial[self.shared :]])
        self.accumulating.initial = [v.numpy() for v in self.accumulating.variables]


def check_accumulation(
    build_step: Callable[[], Step],
    micro_batches: Sequence[Batch],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    metric_rtol: float = 1e-5,
) -> None:
    """Asserts invariant 4: k accumulated micro-batches == one step on the batch holding them all.

    The step from `build_step` runs once on the concatenated batch; a copy whose phases
    each accumulate k = len(micro_batches) micro-batches (`accumulated`) runs k steps, one
    per micro-batch, from the same weights. The first k - 1 must change no weight and no
    optimizer slot; after the k-th, every weight, optimizer variable and metric state must
    match.

    Args:
      build_step: builds the step WITHOUT accumulation; called twice, then cached for the
        process (pass the same function for every example).
      micro_batches: k >= 2 batches, of any sizes (at least one example each).
      rtol: on each variable's update (float32 sums in another order).
      atol: absolute slack on each variable's update.
      metric_rtol: on metric states.

    Raises:
      InvariantViolation: naming the variable or metric field that differs, and by how much.

    Example:
      >>> from composeloop.parts.recipes import classifier_step
      >>> def build_plain():  # WITHOUT accumulation: the checker adds it
      ...     net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      ...     return classifier_step(net, keras.optimizers.SGD(0.1))
      >>> check_accumulation(build_plain, [{"x": x[:3], "y": y[:3]}, {"x": x[3:], "y": y[3:]}])
    """
    every = len(micro_batches)
    if every < 2:
        raise ValueError(f"check_accumulation needs at least 2 micro-batches, got {every}")
    pair = cached_runner(("accumulation", build_step, every), build_step, lambda: _AccumulationPair(build_step, every))
    whole = {key: np.concatenate([np.asarray(part[key]) for part in micro_batches]) for key in micro_batches[0]}
    sizes = [batch_size(part) for part in micro_batches]
    invariant, shared = "accumulation (4)", pair.shared
    try:
        pair.plain.restore()
        pair.plain.train_once([whole])
        want, want_states = [v.numpy() for v in pair.plain.variables], pair.plain.program.states("train")
        pair.accumulating.restore()
        for part in micro_batches[:-1]:
            pair.accumulating.train_once([part])
        held = [v.numpy() for v in pair.accumulating.variables[:shared]]
        pair.accumulating.train_once([micro_batches[-1]])
        got, got_states = [v.numpy() for v in pair.accumulating.variables], pair.accumulating.program.states("train")
    finally:
        pair.plain.restore()
        pair.accumulating.restore()
    names, initial = pair.plain.names[:shared], pair.plain.initial[:shared]
    for name, start, now in zip(names, initial, held, strict=True):
        gap = difference(start, now, rtol=0.0, atol=0.0)
        if gap is not None:
            what = f"the first {every - 1} of {every} micro-batches (sizes {sizes}) changed variable '{name}': {gap}"
            raise InvariantViolation(invariant, what, ACCUMULATION_RULE)
    context = f"{every} accumulated micro-batches of sizes {sizes} vs one batch of {sum(sizes)}"
    for name, start, expected, actual in zip(names, initial, want[:shared], got[:shared], strict=True):
        gap = difference(expected - start, actual - start, rtol, atol)
        if gap is not None:
            raise InvariantViolation(invariant, f"{context}: the update of variable '{name}' {gap}", ACCUMULATION_RULE)
    _compare_states(invariant, ACCUMULATION_RULE, context, want_states, got_states, metric_rtol)
