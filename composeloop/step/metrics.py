"""Metric stages: mergeable metric states and the functions that update them.

A metric state is a dict of float64 scalars that are SUMS (a total and a count, correct
predictions and a count). Sums make every state mergeable by addition, with the empty state
(all zeros) as identity: any split of the data, in any order, over any number of replicas,
gives the same state, and a mean is only taken in `result`. This is why replicas are reduced
by summing states, never by averaging per-replica means.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import tensorflow as tf

from composeloop.step.records import Context, Tensors

State = Mapping[str, tf.Tensor]
Update = Callable[[State, Context, Tensors, Tensors], State]


@attrs.frozen
class Metric:
    """A named metric: its state's fields, how a batch updates them, how to read them.

    Attributes:
      name: the name it is reported under (e.g. "loss" gives train_loss and val_loss).
      fields: names of the additive float64 scalars in its state.
      update: ``(state, context, outputs, losses) -> new state``; must add the batch's
        contribution to `state`, so that states stay mergeable.
      result: ``state -> scalar``.
      higher_is_better: which way it improves, for early stopping, sweeps and search;
        None: `composeloop.vocabulary.higher_is_better` decides by its name.
    """

    name: str
    fields: tuple[str, ...] = attrs.field(converter=tuple)
    update: Update
    result: Callable[[State], tf.Tensor]
    higher_is_better: bool | None = None

    def empty(self) -> dict[str, tf.Tensor]:
        """The identity state: every field zero."""
        return {field: tf.constant(0.0, tf.float64) for field in self.fields}


def merge(a: State, b: State) -> dict[str, tf.Tensor]:
    """Merges two states of one metric; commutative, associative, identity `empty()`."""
    return {field: a[field] + b[field] for field in a}


def _ratio(numerator: str, denominator: str) -> Callable[[State], tf.Tensor]:
    def result(state: State) -> tf.Tensor:
        return tf.math.divide_no_nan(state[numerator], state[denominator])

    return result


def _sum_and_count(values: tf.Tensor) -> dict[str, tf.Tensor]:
    values = tf.cast(tf.reshape(values, [-1]), tf.float64)
    return {"total": tf.reduce_sum(values), "count": tf.cast(tf.size(values), tf.float64)}


def mean_loss(name: str = "loss", of: str | None = None) -> Metric:
    """The mean over examples of a per-example loss (or of all of them summed).

    Args:
      name: the name reported.
      of: the loss term to average; None: the sum of all per-example loss terms.

    Example:
      >>> metric = mean_loss("loss")
      >>> state = metric.update(metric.empty(), context, {}, {"loss": tf.constant([1.0, 2.0, 6.0])})
      >>> {field: float(value) for field, value in state.items()}, float(metric.result(state))
      ({'total': 9.0, 'count': 3.0}, 3.0)
    """

    def update(state: State, context: Context, outputs: Tensors, losses: Tensors) -> State:
        per_example = losses[of] if of is not None else tf.add_n(list(losses.values()))
        return merge(state, _sum_and_count(per_example))

    return Metric(name, ("total", "count"), update, _ratio("total", "count"))


def mean_output(name: str, output: str) -> Metric:
    """The mean over all elements of one named output (e.g. a discriminator's score)."""

    def update(state: State, context: Context, outputs: Tensors, losses: Tensors) -> State:
        return merge(state, _sum_and_count(outputs[output]))

    return Metric(name, ("total", "count"), update, _ratio("total", "count"))


def accuracy(name: str = "accuracy", labels: str = "y", logits: str = "logits") -> Metric:
    """The fraction of examples whose largest logit is at the true class.

    Args:
      name: the name reported.
      labels: batch feature holding integer class ids.
      logits: output holding per-class scores.

    Example:
      >>> metric = accuracy(labels="y", logits="logits")
      >>> logits = tf.one_hot([0, 1, 2, 0, 1, 2, 2, 2], 3)  # right for the first six of `y`
      >>> float(metric.result(metric.update(metric.empty(), context, {"logits": logits}, {})))
      0.75
    """

    def update(state: State, context: Context, outputs: Tensors, losses: Tensors) -> State:
        predicted = tf.argmax(outputs[logits], axis=-1, output_type=tf.int64)
        correct = tf.equal(predicted, tf.cast(context.batch[labels], tf.int64))
        return merge(state, _sum_and_count(tf.cast(correct, tf.float64)))

    return Metric(name, ("total", "count"), update, _ratio("total", "count"))
