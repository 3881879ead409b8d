"""The checker for masked stages: variables a mask leaves out are left alone.

This module owns `check_masked_untouched`. For a gradient transform (`masked`, `partition`
with a pass-through default, `add_decayed_weights` with ``exclude``), "left alone" means
the gradient of every such variable comes out bit for bit as it went in. For an apply
wrapper (`decoupled_weight_decay` with ``exclude``), it means every such variable ends the
update exactly where the wrapped stage alone would have put it: the wrapper adds nothing to
it. The checker runs the stage eagerly on the variables it is given and puts every
variable (and the stage's state) back afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from composeloop.step import ApplyWrapper, Context, Gradients
from composeloop.step.apply import apply_variables, build_apply
from composeloop.step.groups import Mask, Selector, variable_path
from composeloop.step.stateful import build_stage
from composeloop.testing.violations import InvariantViolation, difference

_INVARIANT = "masked variables untouched"
_RULE = (
    "a variable the mask leaves out gets its gradient through a transform unchanged, and an apply wrapper moves "
    "it exactly as the stage it wraps would (e.g. it is never decayed)"
)


def _snapshot(variables: Sequence[Any]) -> list[np.ndarray]:
    return [np.array(tf.convert_to_tensor(v)) for v in variables]


def _put_back(variables: Sequence[Any], values: Sequence[np.ndarray]) -> None:
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def _after(apply: Any, values: list[tf.Tensor], variables: Sequence[Any], state: Sequence[Any]) -> list[np.ndarray]:
    """The variables after one update by `apply`; every variable and the state put back."""
    start, state_start = _snapshot(variables), _snapshot(state)
    try:
        apply(values, list(variables))
        return _snapshot(variables)
    finally:
        _put_back(variables, start)
        _put_back(state, state_start)


def check_masked_untouched(
    stage: Any,
    grads: Sequence[Any],
    variables: Sequence[Any],
    untouched: Mask,
    *,
    context: Context | None = None,
) -> None:
    """Asserts that `stage` leaves the variables `untouched` picks alone.

    Args:
      stage: a gradient transform, or an apply wrapper (an `ApplyWrapper`, e.g.
        `decoupled_weight_decay(...)`), which is compared with the stage it wraps.
      grads: one gradient array per variable.
      variables: the variable group (Keras variables: masks read their paths); the stage is
        built on it if it needs building.
      untouched: the mask (path patterns or a predicate) of the variables to check; it
        must pick at least one.
      context: passed to a transform (the built-in masked stages do not read it).

    Raises:
      InvariantViolation: naming the variable whose gradient or update changed, and by how much.

    Example:
      >>> check_masked_untouched(masked(clip_by_global_norm(0.1), "kernel"), grads, model.trainable_variables, "bias")
      >>> check_masked_untouched(decoupled_weight_decay(optimizer_apply(adam), 0.1, exclude=["bias"]),
      ...                        grads, model.trainable_variables, ["bias"])
    """
    variables = list(variables)
    values = [tf.constant(np.asarray(g), dtype=tf.as_dtype(v.dtype)) for g, v in zip(grads, variables, strict=True)]
    picked = Selector(untouched, "check_masked_untouched", "untouched").picks(variables)
    if not any(picked):
        raise ValueError("check_masked_untouched: untouched picks none of the variables; nothing to check")
    if isinstance(stage, ApplyWrapper):
        build_apply(stage, variables)
        state = apply_variables(stage)
        expected = _after(stage.inner, values, variables, state)
        actual = _after(stage, values, variables, state)
        what = f"{stage.kind} moved variable '{{}}' differently from the apply stage it wraps: {{}}"
    else:
        build_stage(stage, variables)
        expected = [np.asarray(v) for v in values]
        actual = [np.asarray(v) for v in stage(Gradients(values), variables, context).values]
        what = "the transform changed the gradient of variable '{}': {}"
    for variable, chosen, want, got in zip(variables, picked, expected, actual, strict=True):
        if not chosen:
            continue
        gap = difference(want, got, rtol=0.0, atol=0.0)
        if gap is not None:
            raise InvariantViolation(_INVARIANT, what.format(variable_path(variable), gap), _RULE)
