"""A phase: the six slots that turn a batch into one update of one variable group.

This module owns the `Phase` record and the order its slots run in: forward, loss and
aggregation under one tape; the all-reduce of the gradients across replicas; the gradient
transforms; the apply; the metric updates. It knows nothing of strategies or compilation:
replicas are reached only through `context.replication`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import tensorflow as tf

from composeloop.errors import ComposeError
from composeloop.step.aggregate import Aggregate
from composeloop.step.apply import Apply
from composeloop.step.forward import Forward
from composeloop.step.gradients import Transform, global_norm, identity
from composeloop.step.losses import Loss
from composeloop.step.metrics import Metric, State, merge
from composeloop.step.records import Context, Gradients, Tensors
from composeloop.step.stateful import build_stage


def _at_least_one(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ComposeError(f"phase '{instance.name}': {attribute.name} must be >= 1, got {value}")


@attrs.frozen
class Phase:
    """One tape, one variable group, one optimizer: the unit a step is made of.

    Attributes:
      name: unique within the step; later phases read this phase's outputs under it.
      forward: ``context -> outputs``.
      loss: ``(context, outputs) -> per-example losses``.
      aggregate: ``(context, losses) -> scalar`` (the extra-loss aggregation slot).
      apply: ``(gradients, variables) -> None``; updates only this phase's variables.
      trains: names of the models whose trainable variables this phase updates.
      transform: ``(Gradients, variables, context) -> Gradients``.
      metrics: metrics updated from this phase's outputs and losses.
      repeats: how many times the phase runs per step (e.g. n_critic for a critic).
    """

    name: str
    forward: Forward
    loss: Loss
    aggregate: Aggregate
    apply: Apply
    trains: tuple[str, ...] = attrs.field(converter=tuple, default=("model",))
    transform: Transform = attrs.field(factory=identity)
    metrics: tuple[Metric, ...] = attrs.field(converter=tuple, default=())
    repeats: int = attrs.field(default=1, validator=_at_least_one)


def phase_variables(phase: Phase, models: Mapping[str, Any]) -> list[tf.Variable]:
    """The trainable variables of the models a phase trains, each once, in a fixed order."""
    seen: set[int] = set()
    variables = []
    for name in phase.trains:
        for variable in models[name].trainable_variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    return variables


def build_phase(phase: Phase, variables: Sequence[tf.Variable]) -> list[tf.Variable]:
    """Creates the state of every stateful stage in the phase; the engine calls it in the
    strategy's scope before tracing.

    Returns:
      The variables the aggregation and transform stages created (accumulators, loss
      scales), in creation order, for checkpoints. The apply stage's state (optimizer
      slots) is not among them: the apply stage reports its own.
    """
    build_stage(phase.apply, variables)
    made: list[tf.Variable] = []

    def recording(next_creator: Callable, **kwargs: Any) -> tf.Variable:
        variable = next_creator(**kwargs)
        made.append(variable)
        return variable

    with tf.variable_creator_scope(recording):
        build_stage(phase.aggregate, variables)
        build_stage(phase.transform, variables)
    return made


def _call_slot(phase: Phase, slot: str, fn: Callable, *args: Any) -> Any:
    """Calls one slot, turning a missing-name lookup into an error naming the slot."""
    try:
        return fn(*args)
    except KeyError as missing:
        available = _names_available(slot, args)
        raise ComposeError(
            f"phase '{phase.name}' slot '{slot}' looked up {missing} but found only: {available}"
        ) from None


def _names_available(slot: str, args: Sequence[Any]) -> str:
    names: list[str] = []
    for arg in args:
        if isinstance(arg, Context):
            names += [f"batch[{k!r}]" for k in arg.batch] + [f"models[{k!r}]" for k in arg.models]
            names += [f"outputs[{k!r}]" for k in arg.outputs]
        elif isinstance(arg, Mapping):
            names += [repr(k) for k in arg]
    return ", ".join(names) or "nothing"


def _check_losses(phase: Phase, losses: Any) -> None:
    if not isinstance(losses, Mapping) or not losses:
        raise ComposeError(
            f"phase '{phase.name}' slot 'loss' must return a non-empty dict of per-example losses, "
            f"got {type(losses).__name__}"
        )
    for name, value in losses.items():
        if value.shape.rank != 1:
            raise ComposeError(
                f"phase '{phase.name}' slot 'loss' must give per-example losses of shape (batch,); "
                f"'{name}' has shape {tuple(value.shape)}"
            )


def _objective(phase: Phase, context: Context) -> tuple[Tensors, Tensors, tf.Tensor]:
    """Forward, loss and aggregation: what the tape records."""
    outputs = _call_slot(phase, "forward", phase.forward, context)
    if not isinstance(outputs, Mapping):
        raise ComposeError(
            f"phase '{phase.name}' slot 'forward' must return a dict of outputs, got {type(outputs).__name__}"
        )
    losses = _call_slot(phase, "loss", phase.loss, context, outputs)
    _check_losses(phase, losses)
    objective = _call_slot(phase, "aggregate", phase.aggregate, context, losses)
    if tf.convert_to_tensor(objective).shape.rank != 0:
        raise ComposeError(
            f"phase '{phase.name}' slot 'aggregate' must return a scalar, got shape {tuple(objective.shape)}"
        )
    return outputs, losses, objective


def _update_metrics(
    phase: Phase, context: Context, outputs: Tensors, losses: Tensors, states: Mapping[str, State]
) -> dict[str, State]:
    """Adds this batch's contribution, summed over replicas, to the phase's metric states."""
    if not phase.metrics:
        return {}
    local = {
        metric.name: _call_slot(
            phase, f"metrics[{metric.name!r}]", metric.update, metric.empty(), context, outputs, losses
        )
        for metric in phase.metrics
    }
    summed = context.replication.sum(local)
    return {name: merge(states[name], summed[name]) for name in local}


def run_phase(
    phase: Phase, context: Context, states: Mapping[str, State]
) -> tuple[Tensors, dict[str, State], dict[str, tf.Tensor]]:
    """Runs one phase once: one update of its variables and its metrics.

    Args:
      phase: the phase.
      context: this replica's context, with the seed already unique to this phase.
      states: current metric states, by metric name.

    Returns:
      (outputs, the phase's new metric states, logs: ``objective``, ``applied`` and
      ``grad_norm``: a zero-argument function giving the global norm of the aggregated
      gradient before the transforms, so that only a caller who wants it pays for it).
    """
    variables = phase_variables(phase, context.models)
    with tf.GradientTape() as tape:
        outputs, losses, objective = _objective(phase, context)
    raw = tape.gradient(objective, variables)
    # A variable the objective does not reach gets a zero gradient, so transforms and
    # all-reduces always see one tensor per variable.
    raw = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(raw, variables, strict=False)]
    reduced = context.replication.sum(raw)
    update = _call_slot(phase, "transform", phase.transform, Gradients(reduced), variables, context)
    applied = context.replication.apply(phase.apply, update, variables)
    new_states = _update_metrics(phase, context, outputs, losses, states)
    logs = {
        "objective": context.replication.sum(objective),
        "applied": applied,
        "grad_norm": functools.partial(global_norm, reduced),
    }
    return outputs, new_states, logs


def evaluate_phase(phase: Phase, context: Context, states: Mapping[str, State]) -> tuple[Tensors, dict[str, State]]:
    """Forward, loss and metrics without a tape or an update (validation)."""
    outputs, losses, _ = _objective(phase, context)
    return outputs, _update_metrics(phase, context, outputs, losses, states)
