"""Apply wrappers: an apply stage around another, adding work before or after its update.

This module owns what `ema`, `lookahead` and `decoupled_weight_decay` share: `ApplyWrapper`,
which builds the inner stage, creates the wrapper's own state once for one variable group,
and offers the inner stage's state followed by its own as ``variables`` (so
`Program.checkpoint_variables` saves both and a resume is exact); and the walks down a
chain of wrappers (`unwrap`, `optimizer_of`). It holds no update rule.

A wrapper is an ordinary apply stage ``(gradients, variables) -> None``: the engine calls
it once per applied update (never for a withheld one), on one device or in the
cross-replica context of a strategy, where assigning a mirrored variable updates every
replica's copy. The wrapper calls its inner stage in that same way, so wrappers nest in any
order: ``ema(lookahead(decoupled_weight_decay(optimizer_apply(adam), 1e-4)))``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf

from composeloop.errors import ComposeError
from composeloop.step.apply import Apply, apply_variables, build_apply
from composeloop.step.stateful import state_variable


class ApplyWrapper:
    """Base of the apply stages that wrap another one; subclasses define `_create` and `__call__`.

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
        self._check_replicas()
        self._owner = list(variables)
        self._create(self._owner)

    def _check_replicas(self) -> None:
        # The engine runs a wrapper once, in the cross-replica context, and the wrapper runs
        # its inner stage there. A stage that must run per replica (today's OptimizerApply,
        # until the engine applies Keras optimizers in the cross-replica context: issue 16)
        # would fail while tracing with an error naming no stage; say it here instead.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1 and any(getattr(stage, "sums_across_replicas", False) for stage in unwrap(self.inner)):
            raise ComposeError(
                f"{self.kind}: the wrapped apply stage must run per replica, which a wrapper cannot do under a "
                f"strategy of {replicas} replicas yet; wrap an apply stage that runs in the cross-replica context"
            )

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
