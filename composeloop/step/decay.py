"""Weight decay with exclusion masks, two ways: decoupled (an apply wrapper) and as an L2 gradient term.

`decoupled_weight_decay(apply, rate)` shrinks each decayed variable by ``lr * rate * w``
right before the wrapped apply stage updates it: AdamW's rule (Loshchilov & Hutter), in
the form Keras's ``AdamW`` and PyTorch's ``AdamW`` use (the decay scaled by the current
learning rate, applied before the optimizer's step), but for any optimizer. This is the
one to use with an adaptive optimizer: the decay does not pass through Adam's per-element
scaling, so every weight shrinks at the same relative rate, and it follows a learning-rate
schedule because the rate read is the optimizer's current one.

`add_decayed_weights(rate)` adds ``rate * w`` to each gradient (optax's transform of the
same name): L2 regularisation of the loss written as a transform. With plain SGD it gives
exactly the same update as the decoupled form; with Adam, RMSprop or momentum it does not
(the term is rescaled per element and accumulated), which is why the decoupled form exists.

Both take ``exclude``: path patterns (or a predicate) of the variables NOT to decay, e.g.
``["bias", "norm", "embedding"]``. A pattern matching no variable warns; excluding every
variable is an error (nothing would be decayed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from composeloop.step.apply import Apply
from composeloop.step.gradients import Transform
from composeloop.step.groups import Mask, Selector
from composeloop.step.records import Context, Gradients
from composeloop.step.wrapping import ApplyWrapper, optimizer_of, read

LearningRate = float | Callable[[], Any]


def _check_number(stage: str, argument: str, value: float, *, positive: bool = False) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (positive and value == 0):
        raise ValueError(f"{stage}: {argument} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


class _Decayed:
    """Which variables a decay applies to: all but the excluded, never none."""

    def __init__(self, exclude: Mask, stage: str) -> None:
        self.selector = Selector(exclude, stage, "exclude")
        self.stage = stage

    def __call__(self, variables: Sequence[Any]) -> list[bool]:
        if not self.selector:
            return [True] * len(variables)
        excluded = self.selector.picks(variables)
        if all(excluded):
            raise ValueError(
                f"{self.stage}: exclude={self.selector.describe()} matches every one of the {len(variables)} "
                "variables; nothing would be decayed"
            )
        return [not e for e in excluded]


def add_decayed_weights(rate: float, *, exclude: Mask = ()) -> Transform:
    """Adds ``rate * w`` to the gradient of each variable not excluded (L2 as a transform).

    Equal to `decoupled_weight_decay` under plain SGD; under adaptive optimizers it is L2
    regularisation, not decoupled decay (see the module docstring).

    Args:
      rate: the decay coefficient (>= 0).
      exclude: path patterns or a predicate of the variables left alone.

    Returns:
      A gradient transform.

    Example:
      >>> transform = chain(add_decayed_weights(1e-4, exclude=["bias"]), clip_by_global_norm(1.0))
    """
    rate = _check_number("add_decayed_weights", "rate", rate)
    decayed = _Decayed(exclude, "add_decayed_weights")

    def transform(grads: Gradients, variables: Sequence[tf.Variable], context: Context) -> Gradients:
        chosen = decayed(variables)
        return grads.replace(
            [
                g + tf.cast(rate, g.dtype) * tf.cast(read(v), g.dtype) if decay else g
                for g, v, decay in zip(grads.values, variables, chosen, strict=True)
            ]
        )

    transform.build = decayed  # type: ignore[attr-defined]  # resolves the mask (and warns) before tracing
    return transform


class DecoupledWeightDecay(ApplyWrapper):
    """An apply stage that decays the chosen variables by ``lr * rate * w``, then runs its inner stage.

    Build it with `decoupled_weight_decay`.
    """

    kind = "decoupled_weight_decay"

    def __init__(self, inner: Apply, rate: float, exclude: Mask, learning_rate: LearningRate | None) -> None:
        super().__init__(inner)
        self.rate = _check_number(self.kind, "rate", rate)
        self.decayed = _Decayed(exclude, self.kind)
        if learning_rate is None:
            optimizer = optimizer_of(inner)
            if optimizer is None:
                raise ValueError(
                    f"{self.kind}: learning_rate is needed when the apply stage runs no Keras optimizer "
                    "(a float, a function () -> rate, or 1.0 for a decay independent of it)"
                )
            learning_rate = lambda: optimizer.learning_rate  # noqa: E731  # read at each update: schedules apply
        elif not callable(learning_rate):
            learning_rate = _check_number(self.kind, "learning_rate", learning_rate, positive=True)
        self.learning_rate = learning_rate

    def _create(self, variables: list[Any]) -> None:
        self.decayed(variables)  # resolves the mask (warns, or refuses excluding all) before tracing

    def _before(self, variables: Sequence[Any]) -> None:
        chosen = self.decayed(variables)
        rate = self.learning_rate() if callable(self.learning_rate) else self.learning_rate
        # Decay first, from the weights the inner stage's update also starts from, in Keras
        # AdamW's order of operations: w - (w * rate) * lr.
        for variable, decay in zip(variables, chosen, strict=True):
            if decay:
                value = read(variable)
                variable.assign(value - value * tf.cast(self.rate, value.dtype) * tf.cast(rate, value.dtype))


def decoupled_weight_decay(
    apply: Apply, rate: float, *, exclude: Mask = (), learning_rate: LearningRate | None = None
) -> DecoupledWeightDecay:
    """AdamW-style decoupled weight decay around any apply stage, with exclusions.

    Before each applied update: ``w -= learning_rate * rate * w`` for every variable not
    excluded, then the wrapped stage's own update. Withheld updates (non-finite gradients,
    accumulation) decay nothing.

    Args:
      apply: the apply stage to wrap, e.g. ``optimizer_apply(keras.optimizers.Adam(1e-3))``.
      rate: the decay coefficient (>= 0); Keras's and PyTorch's AdamW ``weight_decay``.
      exclude: path patterns (regular expressions searched in ``variable.path``) or a
        predicate of the variables NOT decayed, e.g. ``["bias", "norm", "embedding"]``.
      learning_rate: what the decay is scaled by. None: the wrapped Keras optimizer's
        current learning rate (its schedule included); a float or a function () -> rate
        for any other apply stage; 1.0 decays by `rate` alone.

    Returns:
      An apply stage; its state is the wrapped stage's.

    Raises:
      ValueError: a negative or non-finite `rate` or `learning_rate`; no learning rate to
        read; at build, an `exclude` that matches every variable.

    Example:
      >>> apply = decoupled_weight_decay(optimizer_apply(keras.optimizers.Adam(1e-3)), 0.05, exclude=["bias"])
    """
    return DecoupledWeightDecay(apply, rate, exclude, learning_rate)
