"""Apply stages: gradients and variables in, an update of the variables as the effect.

The apply stage is the only stage with an effect. A Keras optimizer is wrapped by
`optimizer_apply`; any function ``(gradients, variables) -> None`` that updates the
variables (sign-SGD, lookahead, ...) is an apply stage too. An apply stage may offer
``build(variables)``: the engine calls it before tracing, so that optimizer slots exist
before the compiled step first runs (Keras 3 cannot create them inside a trace). An apply
stage that keeps state (slots, a step count) offers it as ``variables``, so checkpoints
save it and a resume is exact.

Under a `tf.distribute` strategy the gradients an apply stage gets are already summed
across replicas, and the engine runs the stage exactly once per step. By default it calls
the stage once, in the cross-replica context, with the first replica's copy: assigning a
mirrored variable there updates every replica's copy. A stage that must instead be called
in every replica (a Keras optimizer: it updates mirrored variables through merge calls)
offers ``replicated()``, a context manager within which the engine calls it per replica
with that replica's copy of the summed gradients, and it must then neither sum them again
nor update a variable more than once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import tensorflow as tf

Apply = Callable[[Sequence[tf.Tensor], Sequence[tf.Variable]], Any]


@attrs.frozen
class OptimizerApply:
    """Applies gradients with one Keras optimizer, owned by one variable group."""

    optimizer: Any

    def __call__(self, gradients: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> None:
        self.optimizer.apply(list(gradients), list(variables))

    @contextlib.contextmanager
    def replicated(self) -> Iterator[None]:
        """While open, a per-replica call applies gradients already summed across replicas.

        Keras 3's TensorFlow optimizer, called per replica, first sums the gradients it is
        given across replicas (`_all_reduce_sum_gradients`), then updates each mirrored
        variable once from its replica's copy (`distribution.extended.update`). The
        engine's gradients are summed already, so that second all-reduce is switched off
        here, for this optimizer and the one it wraps (a `LossScaleOptimizer`'s), and only
        here; everything else (clipping, weight decay, EMA, the step count) runs as in
        `model.fit`. Open it once around all replicas' calls, not per replica: Keras runs
        replicas in threads.
        """
        optimizers = _optimizer_chain(self.optimizer)
        for optimizer in optimizers:
            if not callable(getattr(optimizer, "_all_reduce_sum_gradients", None)):
                raise TypeError(
                    f"optimizer_apply: {type(optimizer).__name__} is not a Keras 3 TensorFlow optimizer "
                    "(no _all_reduce_sum_gradients); under a strategy composeloop cannot apply it once"
                )
            optimizer._all_reduce_sum_gradients = _summed_already
        try:
            yield
        finally:
            for optimizer in optimizers:
                del optimizer._all_reduce_sum_gradients

    def build(self, variables: Sequence[tf.Variable]) -> None:
        if not self.optimizer.built:
            self.optimizer.build(list(variables))

    @property
    def variables(self) -> list[Any]:
        """The optimizer's state: its update count, learning rate and slots."""
        return list(self.optimizer.variables)


def _summed_already(grads_and_vars: Any) -> list:
    return list(grads_and_vars)


def _optimizer_chain(optimizer: Any) -> list[Any]:
    """The optimizer and those it wraps (`inner_optimizer`), outermost first."""
    chain = [optimizer]
    while getattr(chain[-1], "inner_optimizer", None) is not None:
        chain.append(chain[-1].inner_optimizer)
    return chain


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
