"""Checkers for the metric invariants (7 and 8 of docs/testing.md) on a user's own `Metric`.

A metric is updated exactly as the engine updates it: `metric.update` from the empty state
on each piece of the data, the pieces' states combined with `merge` (what the engine does
across steps and replicas). The checkers call the metric eagerly on the arrays they are
given: no compilation. `check_reset_gives_empty` runs a compiled step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import reduce

import numpy as np
import tensorflow as tf

from composeloop.step import Metric, Step, merge
from composeloop.testing.harness import Batch, batch_size, context_for, runner_for, split_batch
from composeloop.testing.violations import InvariantViolation, as_array, difference

SPLIT_RULE = (
    "any split of the data gives the same metric state and result; merge is commutative and associative "
    "with the empty state as identity"
)
RANGE_RULE = "reset gives the empty state, and results stay within the metric's range"


def _update(metric: Metric, batch: Batch, outputs: Batch, losses: Batch) -> dict:
    context = context_for(batch, global_batch_size=max(batch_size(batch), 1))
    outputs = {name: tf.convert_to_tensor(value) for name, value in outputs.items()}
    losses = {name: tf.convert_to_tensor(value) for name, value in losses.items()}
    return dict(metric.update(metric.empty(), context, outputs, losses))


def _pieces(data: Mapping[str, Batch], sizes: Sequence[int]) -> list[dict[str, dict]]:
    """Cuts batch, outputs and losses together: one dict of the three per piece."""
    cut = {kind: split_batch(values, sizes) if values else [{}] * len(sizes) for kind, values in data.items()}
    return [{kind: cut[kind][i] for kind in data} for i in range(len(sizes))]


def _compare(metric: Metric, what: str, expected: Mapping, actual: Mapping, rtol: float, atol: float) -> None:
    for field in metric.fields:
        gap = difference(expected[field], actual[field], rtol, atol)
        if gap is not None:
            raise InvariantViolation(
                "batch-split invariance (7)",
                f"metric '{metric.name}': {what}: state field '{field}' {gap}; result "
                f"{float(metric.result(expected)):.9g} vs {float(metric.result(actual)):.9g}",
                SPLIT_RULE,
            )


def check_batch_split_invariance(
    metric: Metric,
    batch: Batch,
    sizes: Sequence[int],
    *,
    outputs: Batch | None = None,
    losses: Batch | None = None,
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> None:
    """Asserts invariant 7: the pieces of a batch, merged in any order, give the whole batch's state.

    Args:
      metric: the metric under test.
      batch: the examples by feature name (e.g. ``{"y": labels}``); outputs and losses hold
        one row per example too, and are cut with the batch.
      sizes: sizes of the consecutive pieces (adding up to the batch size; zeros allowed).
      outputs: model outputs the metric's update reads besides the batch.
      losses: per-example losses the metric's update reads besides the batch.
      rtol: float64 sums of the same float32 values in another order: 1e-9 relative is
        thousands of ulps of slack, still far below any real bug.
      atol: absolute slack on each state field.

    Raises:
      InvariantViolation: naming the state field and the split that breaks it.

    Example:
      >>> from composeloop.step import Metric, accuracy
      >>> logits = np.eye(3, dtype=np.float32)[[0, 1, 1, 0, 2, 2, 0, 1]]
      >>> check_batch_split_invariance(accuracy(), {"y": y}, [3, 0, 5], outputs={"logits": logits})
      >>> def averaged(state, context, outputs, losses):  # wrong: a mean of means is no sum
      ...     return {"mean": (state["mean"] + tf.reduce_mean(tf.cast(context.batch["y"], tf.float64))) / 2}
      >>> check_batch_split_invariance(Metric("mean_y", ("mean",), averaged, lambda s: s["mean"]), {"y": y}, [3, 5])
      Traceback (most recent call last):
      composeloop.testing.violations.InvariantViolation: batch-split invariance (7) violated: metric 'mean_y':
      pieces of sizes [3, 5] merged in order vs the whole batch: state field 'mean' differs by 0.4625 ...
    """
    data = {"batch": batch, "outputs": outputs or {}, "losses": losses or {}}
    whole = _update(metric, batch, data["outputs"], data["losses"])
    states = [_update(metric, p["batch"], p["outputs"], p["losses"]) for p in _pieces(data, sizes)]
    empty = metric.empty()
    _compare(
        metric,
        f"pieces of sizes {list(sizes)} merged in order vs the whole batch",
        whole,
        reduce(merge, states, empty),
        rtol,
        atol,
    )
    _compare(
        metric,
        f"pieces of sizes {list(sizes)} merged in reverse order",
        whole,
        reduce(merge, states[::-1], empty),
        rtol,
        atol,
    )
    if len(states) >= 3:
        right = merge(states[0], reduce(merge, states[1:]))
        _compare(metric, f"pieces of sizes {list(sizes)} merged right-first (associativity)", whole, right, rtol, atol)
    _compare(
        metric, "the whole batch's state merged with the empty state (identity)", whole, merge(whole, empty), 0.0, 0.0
    )


def check_metric_range(
    metric: Metric,
    batch: Batch,
    low: float,
    high: float,
    *,
    outputs: Batch | None = None,
    losses: Batch | None = None,
) -> None:
    """Asserts invariant 8 for a metric: the empty state is all zeros and reads a finite
    value, and the result on `batch` is finite and within ``[low, high]``.

    Example:
      >>> from composeloop.step import accuracy
      >>> check_metric_range(accuracy(), {"y": y}, 0.0, 1.0, outputs={"logits": np.ones((8, 3), np.float32)})
    """
    invariant = "reset and range (8)"
    empty = metric.empty()
    for field in metric.fields:
        if float(empty[field]) != 0.0:
            raise InvariantViolation(
                invariant, f"metric '{metric.name}': empty field '{field}' is {float(empty[field])}", RANGE_RULE
            )
    if not np.isfinite(float(metric.result(empty))):
        raise InvariantViolation(
            invariant, f"metric '{metric.name}' reads {float(metric.result(empty))} when empty", RANGE_RULE
        )
    value = float(metric.result(_update(metric, batch, outputs or {}, losses or {})))
    if not (np.isfinite(value) and low <= value <= high):
        raise InvariantViolation(
            invariant,
            f"metric '{metric.name}' gives {value:.9g} on {batch_size(batch)} examples, outside [{low:g}, {high:g}]",
            RANGE_RULE,
        )


def check_reset_gives_empty(step: Step, batch: Batch) -> None:
    """Asserts invariant 8 for a compiled step: after a training step, `Program.reset`
    brings every metric state back to its metric's empty state.

    Example:
      >>> from composeloop.parts.recipes import classifier_step
      >>> check_reset_gives_empty(classifier_step(model, keras.optimizers.SGD(0.1)), {"x": x, "y": y})
    """
    runner = runner_for(step)
    runner.restore()
    runner.train_once([batch])
    runner.program.reset("train")
    states = runner.program.states("train")
    runner.restore()
    for metric in step.metrics:
        for field, value in metric.empty().items():
            if states[metric.name][field] != float(as_array(value)):
                raise InvariantViolation(
                    "reset and range (8)",
                    f"after reset, metric '{metric.name}' field '{field}' is {states[metric.name][field]}, "
                    f"not its empty value {float(as_array(value))}",
                    RANGE_RULE,
                )
