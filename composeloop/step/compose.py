"""`compose`: checks that phases fit together and makes them one `Step`.

A `Step` is a pure function ``(context, metric states) -> (new metric states, logs)``: it
runs its phases in order (each `repeats` times), gives each run its own seed, and lets
later phases read earlier phases' outputs. Checks that can be made before tracing (slot
arity, model names, variable groups, duplicate names) are made here, each failing with a
`ComposeError` naming the phase and slot.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import tensorflow as tf

from composeloop.errors import ComposeError
from composeloop.step.metrics import Metric, State
from composeloop.step.phase import Phase, evaluate_phase, phase_variables, run_phase
from composeloop.step.records import Context

# Slot name -> the arguments it is called with, for arity checks and error messages.
SLOT_ARGUMENTS = {
    "forward": ("context",),
    "loss": ("context", "outputs"),
    "aggregate": ("context", "losses"),
    "transform": ("gradients", "variables", "context"),
    "apply": ("gradients", "variables"),
}
METRIC_UPDATE_ARGUMENTS = ("state", "context", "outputs", "losses")


def fold_seed(seed: tf.Tensor, *data: int | tf.Tensor) -> tf.Tensor:
    """Derives a new stateless seed from `seed` and integers, deterministically."""
    for value in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


@attrs.frozen
class Step:
    """Ordered phases over named models; call it inside a compiled function.

    Attributes:
      phases: the phases, run in this order each step.
      models: the Keras models, by name.
    """

    phases: tuple[Phase, ...]
    models: Mapping[str, Any]

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return tuple(metric for phase in self.phases for metric in phase.metrics)

    def empty_states(self) -> dict[str, dict[str, tf.Tensor]]:
        """Every metric's empty state, by metric name."""
        return {metric.name: metric.empty() for metric in self.metrics}

    def variables(self, phase: Phase) -> list[tf.Variable]:
        """The variable group a phase trains."""
        return phase_variables(phase, self.models)

    def __call__(self, context: Context, states: Mapping[str, State]) -> tuple[dict[str, State], dict[str, tf.Tensor]]:
        """Runs every phase on `context`; returns (new metric states, logs by "phase/name")."""
        states = dict(states)
        logs: dict[str, tf.Tensor] = {}
        for index, phase in enumerate(self.phases):
            for repeat in range(phase.repeats):
                phase_context = attrs.evolve(context, seed=fold_seed(context.seed, index, repeat))
                outputs, new_states, phase_logs = run_phase(phase, phase_context, states)
                states.update(new_states)
                context = attrs.evolve(context, outputs={**context.outputs, phase.name: outputs})
            logs.update({f"{phase.name}/{key}": value for key, value in phase_logs.items()})
        return states, logs

    def evaluate(self, context: Context, states: Mapping[str, State]) -> dict[str, State]:
        """Runs every phase's forward, loss and metrics in inference mode; no update."""
        states = dict(states)
        context = attrs.evolve(context, training=False)
        for index, phase in enumerate(self.phases):
            if not phase.metrics:
                continue
            phase_context = attrs.evolve(context, seed=fold_seed(context.seed, index, 0))
            outputs, new_states = evaluate_phase(phase, phase_context, states)
            states.update(new_states)
            context = attrs.evolve(context, outputs={**context.outputs, phase.name: outputs})
        return states


def accepts_arguments(fn: Callable, count: int) -> bool:
    """Whether `fn` can be called with `count` positional arguments."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _check_slot(phase_name: str, slot: str, fn: Any, arguments: tuple[str, ...]) -> None:
    if not callable(fn):
        raise ComposeError(f"phase '{phase_name}' slot '{slot}' must be callable, got {type(fn).__name__}")
    if not accepts_arguments(fn, len(arguments)):
        raise ComposeError(
            f"phase '{phase_name}' slot '{slot}' must accept ({', '.join(arguments)}), "
            f"but {getattr(fn, '__name__', fn)!s}{inspect.signature(fn)} does not"
        )


def _check_phase(phase: Any, position: int, models: Mapping[str, Any]) -> None:
    if not isinstance(phase, Phase):
        raise ComposeError(f"compose: argument {position} must be a Phase, got {type(phase).__name__}")
    for slot, arguments in SLOT_ARGUMENTS.items():
        _check_slot(phase.name, slot, getattr(phase, slot), arguments)
    for metric in phase.metrics:
        if not isinstance(metric, Metric):
            raise ComposeError(f"phase '{phase.name}' slot 'metrics' holds {type(metric).__name__}, not a Metric")
        _check_slot(phase.name, f"metrics[{metric.name!r}]", metric.update, METRIC_UPDATE_ARGUMENTS)
    if not phase.trains:
        raise ComposeError(f"phase '{phase.name}' trains no model: give trains=(model names)")
    for name in phase.trains:
        if name not in models:
            raise ComposeError(
                f"phase '{phase.name}' trains unknown model '{name}'; models are: {', '.join(models) or 'none'}"
            )
        if not models[name].trainable_variables:
            raise ComposeError(
                f"phase '{phase.name}': model '{name}' has no trainable variables yet; "
                "build it (e.g. call it on one batch) before compose"
            )


def _check_unique(kind: str, names: list[str]) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ComposeError(f"compose: {kind} names must be unique; repeated: {', '.join(repeated)}")


def _check_optimizers_owned_once(phases: tuple[Phase, ...], models: Mapping[str, Any]) -> None:
    """Keras 3 optimizers are built on one variable group; two groups cannot share one."""
    owner: dict[int, Phase] = {}
    for phase in phases:
        optimizer = getattr(phase.apply, "optimizer", None)
        if optimizer is None:
            continue
        first = owner.setdefault(id(optimizer), phase)
        if first is not phase and {id(v) for v in phase_variables(first, models)} != {
            id(v) for v in phase_variables(phase, models)
        }:
            raise ComposeError(
                f"phases '{first.name}' and '{phase.name}' share one optimizer but train different "
                "variables; give each variable group its own optimizer"
            )


def compose(*phases: Phase, models: Mapping[str, Any]) -> Step:
    """Checks that phases fit together and returns the `Step` they make.

    Args:
      *phases: the phases, in the order they run each step.
      models: the Keras models the phases use, by name; each must already be built.

    Returns:
      A `Step`, ready for `composeloop.engine.compile_step`.

    Raises:
      ComposeError: naming the phase and slot that does not fit.

    Example:
      >>> from composeloop.engine import compile_step
      >>> from composeloop.parts.recipes import classifier_phase
      >>> step = compose(classifier_phase(keras.optimizers.Adam()), models={"model": model})
      >>> program = compile_step(step)
      >>> program.train(iter(tf.data.Dataset.from_tensors(batch)))  # steps run
      1
      >>> sorted(program.results())
      ['accuracy', 'loss']
      >>> compose(classifier_phase(keras.optimizers.Adam(), model="net"), models={"model": model})
      Traceback (most recent call last):
      composeloop.errors.ComposeError: phase 'classifier' trains unknown model 'net'; models are: model
    """
    if not phases:
        raise ComposeError("compose: give at least one Phase")
    if not isinstance(models, Mapping) or not models:
        raise ComposeError("compose: models must be a non-empty dict of name -> Keras model")
    for position, phase in enumerate(phases):
        _check_phase(phase, position, models)
    _check_unique("phase", [phase.name for phase in phases])
    _check_unique("metric", [metric.name for phase in phases for metric in phase.metrics])
    _check_optimizers_owned_once(phases, models)
    return Step(tuple(phases), dict(models))
