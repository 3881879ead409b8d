"""Aggregation stages: named per-example losses in, the one scalar a tape differentiates out.

This is the only place where losses are reduced, and it follows one policy: per-example
losses are summed and divided by the GLOBAL batch size; losses that are not per-example
(regularisers, `add_loss` terms, penalties) are divided by the replica count. Gradients
summed over replicas then equal the gradient of one replica on the whole global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import tensorflow as tf

from composeloop.step.records import Context, Tensors
from composeloop.step.stateful import builds

Aggregate = Callable[[Context, Tensors], tf.Tensor]


def global_mean(weights: Mapping[str, float] | None = None) -> Aggregate:
    """Weighted sum of the per-example losses, averaged over the global batch.

    Args:
      weights: weight of each named loss; a loss not named gets weight 1. None: all 1.

    Returns:
      An aggregation stage giving ``sum_k w_k * sum(loss_k) / global_batch_size``.

    Example:
      >>> aggregate = global_mean({"aux": 0.5})
      >>> losses = {"loss": tf.constant([1.0, 3.0]), "aux": tf.constant([2.0, 2.0])}
      >>> float(aggregate(context, losses))  # (1 + 3 + 0.5 * (2 + 2)) / 8, the global batch size
      0.75
    """
    weights = dict(weights or {})

    def aggregate(context: Context, losses: Tensors) -> tf.Tensor:
        total = tf.constant(0.0)
        for name, per_example in losses.items():
            weight = tf.cast(weights.get(name, 1.0), tf.float32)
            total += weight * tf.reduce_sum(tf.cast(per_example, tf.float32))
        return total / context.global_batch_size

    return aggregate


def model_losses(*models: str) -> Aggregate:
    """The models' own losses (kernel regularisers, `add_loss` terms), per replica.

    Reads `model.losses`, so it must run inside the tape, after the forward stage: the
    phase runner guarantees both.

    Args:
      *models: names of the models whose losses count. None given: every model.

    Returns:
      An aggregation stage giving ``sum(model.losses) / num_replicas``.

    Example:
      >>> from composeloop.testing import context_for
      >>> l2 = keras.regularizers.L2(0.01)
      >>> regularised = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer=l2)])
      >>> penalty = model_losses("model")(context_for(batch, {"model": regularised}), {})
      >>> bool(np.isclose(penalty, 0.01 * np.sum(regularised.layers[0].kernel.numpy() ** 2)))
      True
    """

    def aggregate(context: Context, losses: Tensors) -> tf.Tensor:
        names = models or tuple(context.models)
        terms = [tf.cast(term, tf.float32) for name in names for term in context.models[name].losses]
        if not terms:
            return tf.constant(0.0)
        return tf.add_n(terms) / float(context.replication.num_replicas)

    return aggregate


def total(*terms: Aggregate) -> Aggregate:
    """Sum of several aggregation stages; the combinator for extra loss terms.

    Args:
      *terms: aggregation stages; each sees the same context and losses.

    Returns:
      An aggregation stage giving the sum of the terms.

    Example:
      >>> aggregate = total(global_mean(), weighted(0.1, model_losses()))
      >>> float(aggregate(context, {"loss": tf.ones([8])}))  # 8 / 8, and the model has no losses
      1.0
    """

    def aggregate(context: Context, losses: Tensors) -> tf.Tensor:
        return tf.add_n([term(context, losses) for term in terms])

    return builds(aggregate, *terms)


def weighted(weight: float, term: Aggregate) -> Aggregate:
    """One aggregation stage scaled by a constant weight.

    Example:
      >>> float(weighted(0.5, global_mean())(context, {"loss": tf.ones([8])}))
      0.5
    """

    def aggregate(context: Context, losses: Tensors) -> tf.Tensor:
        return tf.cast(weight, tf.float32) * term(context, losses)

    return aggregate


def mean_and_model_losses(weights: Mapping[str, float] | None = None) -> Aggregate:
    """The classifier default: `global_mean(weights)` plus every model's own losses."""
    return total(global_mean(weights), model_losses())
