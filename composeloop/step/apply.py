"""Apply stages: gradients and variables in, an update of the variables as the effect.

The apply stage is the only stage with an effect. A Keras optimizer is wrapped by
`optimizer_apply`; any function ``(gradients, variables) -> None`` that updates the
variables (sign-SGD, lookahead, ...) is an apply stage too. An apply stage may offer
``build(variables)``: the engine calls it before tracing, so that optimizer slots exist
before the compiled step first runs (Keras 3 cannot create them inside a trace). An apply
stage that keeps state (slots, a step count) offers it as ``variables``, so checkpoints
save it and a resume is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import tensorflow as tf

Apply = Callable[[Sequence[tf.Tensor], Sequence[tf.Variable]], Any]


@attrs.frozen
class OptimizerApply:
    """Applies gradients with one Keras optimizer, owned by one variable group."""

    optimizer: Any
    # Keras 3 optimizers all-reduce (sum) what they are given when called per replica.
    sums_across_replicas = True

    def __call__(self, gradients: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> None:
        self.optimizer.apply(list(gradients), list(variables))

    def build(self, variables: Sequence[tf.Variable]) -> None:
        if not self.optimizer.built:
            self.optimizer.build(list(variables))

    @property
    def variables(self) -> list[Any]:
        """The optimizer's state: its update count, learning rate and slots."""
        return list(self.optimizer.variables)


def optimizer_apply(optimizer: Any) -> OptimizerApply:
    """Wraps a Keras 3 optimizer as an apply stage for one variable group.

    Args:
      optimizer: a `keras.optimizers.Optimizer`, used by this phase only.

    Returns:
      An apply stage; the engine builds the optimizer on the phase's variables.

    Example:
      >>> apply = optimizer_apply(keras.optimizers.Adam(1e-3))
      >>> phase = Phase("train", forward, loss, aggregate, apply, trains=("model",))
    """
    return OptimizerApply(optimizer)


def build_apply(apply: Apply, variables: Sequence[tf.Variable]) -> None:
    """Prepares an apply stage for tracing, if it needs preparing."""
    build = getattr(apply, "build", None)
    if callable(build):
        build(variables)


def apply_variables(apply: Apply) -> list[Any]:
    """The state an apply stage keeps (its ``variables``), or [] for a stateless one."""
    variables = getattr(apply, "variables", None)
    if callable(variables):
        variables = variables()
    return list(variables or [])
