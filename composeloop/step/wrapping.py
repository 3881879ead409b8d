"""Apply wrappers: an apply stage around another, adding work before or after its update.

This module owns what `ema`, `lookahead` and `decoupled_weight_decay` share: `ApplyWrapper`,
which builds the inner stage, creates the wrapper's own state once for one variable group,
and offers the inner stage's state followed by its own as ``variables`` (so
`Program.checkpoint_variables` saves both and a resume is exact); and the walks down a
chain of wrappers (`unwrap`, `optimizer_of`). It holds no update rule.

A wrapper is an ordinary apply stage ``(gradients, variables) -> None``: the engine calls
it once per applied update (never for a withheld one). Its own work (`_before` and `_after`
the inner stage's update) always runs where assigning a variable updates every replica's
copy: on one device, or in the cross-replica context of a strategy. The inner stage is
called as the engine would call it: a wrapper offers the ``replicated()`` of the stage it
wraps, so the engine calls a wrapped Keras optimizer per replica, as it calls a bare one,
and the wrapper then enters the cross-replica context (a merge call) for its own work.
Wrappers nest in any order: ``ema(lookahead(decoupled_weight_decay(optimizer_apply(adam))))``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf

from composeloop.errors import ComposeError
from composeloop.step.apply import Apply, apply_variables, build_apply
from composeloop.step.stateful import state_variable


class ApplyWrapper:
    """Base of the apply stages that wrap another one; subclasses define `_create`, `_before`, `_after`.

    Attributes:
      inner: the wrapped apply stage.
    """

    kind = "apply wrapper"  # the factory's name, for messages

    def __init__(self, inner: Apply) -> None:
        if not callable(inner):
            raise TypeError(f"{self.kind}: apply must be an apply stage (a callable), got {type(inner).__name__}")
        self.inner = inner
        self._owner: list[Any] | None = None

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Builds the inner stage, then this wrapper's state for `variables` (once)."""
        build_apply(self.inner, variables)
        if self._owner is not None:
            if [id(v) for v in variables] != [id(v) for v in self._owner]:  # the owner's are alive: ids are safe
                raise ComposeError(f"{self.kind}: one stage serves one variable group; give each phase its own")
            return
        self._owner = list(variables)
        self._create(self._owner)

    def __call__(self, gradients: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> None:
        self.owner  # noqa: B018  # raises if not built
        _once_for_all_replicas(self._before, variables)
        self.inner(gradients, variables)
        _once_for_all_replicas(self._after, variables)

    @property
    def replicated(self) -> Any:
        """The inner stage's ``replicated`` (see `composeloop.step.apply`), or None.

        The engine calls a stage that offers it in every replica; this wrapper then calls
        its inner stage there and its own work once, in the cross-replica context.
        """
        return getattr(self.inner, "replicated", None)

    def _before(self, variables: Sequence[Any]) -> None:
        """This wrapper's work before the inner stage's update (once for all replicas)."""

    def _after(self, variables: Sequence[Any]) -> None:
        """This wrapper's work after the inner stage's update (once for all replicas)."""

    def _create(self, variables: list[Any]) -> None:
        """Creates this wrapper's own state for `variables`."""

    @property
    def own_variables(self) -> list[tf.Variable]:
        """This wrapper's own state (not its inner stage's), for checkpoints."""
        return []

    @property
    def variables(self) -> list[Any]:
        """The inner stage's state, then this wrapper's own: what a checkpoint must hold."""
        return [*apply_variables(self.inner), *self.own_variables]

    @property
    def owner(self) -> list[Any]:
        """The variable group this wrapper was built for."""
        if self._owner is None:
            raise ComposeError(f"{self.kind}: the stage was not built; compile the step with compile_step")
        return self._owner


def _once_for_all_replicas(work: Any, variables: Sequence[Any]) -> None:
    """Runs `work(variables)` where assigning a variable updates every replica's copy.

    In a strategy's replica context (a wrapped stage called per replica) that is a merge
    call: every replica asks, the work runs once. Elsewhere (no strategy, or already in
    the cross-replica context) it runs in place.
    """
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        tf.distribute.get_replica_context().merge_call(lambda _strategy: work(variables))
    else:
        work(variables)


def unwrap(apply: Apply) -> Iterator[Apply]:
    """The stage itself, then each stage it wraps, outermost first."""
    while apply is not None:
        yield apply
        apply = getattr(apply, "inner", None) if isinstance(apply, ApplyWrapper) else None


def optimizer_of(apply: Apply) -> Any | None:
    """The Keras optimizer an apply stage (or a stage it wraps) runs, or None."""
    for stage in unwrap(apply):
        optimizer = getattr(stage, "optimizer", None)
        if optimizer is not None:
            return optimizer
    return None


def read(variable: Any) -> tf.Tensor:
    """A variable's current value as a tensor (Keras and tf variables alike)."""
    return tf.convert_to_tensor(variable)


class CopyingWrapper(ApplyWrapper):
    """An apply wrapper whose state is a copy of each variable and an update count (EMA, lookahead).

    Attributes:
      copies: one state variable per variable of the group, starting at its value (after `build`).
      count: updates applied so far (an int64 state variable; None before `build`).
    """

    def __init__(self, inner: Apply) -> None:
        super().__init__(inner)
        self.copies: list[tf.Variable] = []
        self.count: tf.Variable | None = None

    def _create(self, variables: list[Any]) -> None:
        self.copies = [state_variable(read(v), f"{self.kind}_{i}", read(v).dtype) for i, v in enumerate(variables)]
        self.count = state_variable(0, f"{self.kind}_updates", tf.int64)

    @property
    def own_variables(self) -> list[tf.Variable]:
        return [] if self.count is None else [*self.copies, self.count]
