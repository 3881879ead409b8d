"""Loss stages: context and outputs in, named per-example losses out.

A loss stage never reduces over the batch: reduction is the job of the aggregation stage,
which alone knows the global batch size and the replica count.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from composeloop.step.records import Context, Tensors

Loss = Callable[[Context, Tensors], Tensors]


def sparse_categorical_crossentropy(labels: str = "y", logits: str = "logits", name: str = "loss") -> Loss:
    """Per-example cross-entropy between integer labels and unnormalised logits.

    Args:
      labels: batch feature holding integer class ids, shape ``(batch,)``.
      logits: output holding logits, shape ``(batch, classes)``.
      name: name of the loss term it produces.

    Returns:
      A loss stage giving ``{name: loss}`` with ``loss`` of shape ``(batch,)``, float32.

    Example:
      >>> loss = sparse_categorical_crossentropy(labels="y", logits="logits")
      >>> loss(context, {"logits": tf.zeros([8, 3])})["loss"].numpy().round(4)  # log(3) for uniform logits
      array([1.0986, 1.0986, 1.0986, 1.0986, 1.0986, 1.0986, 1.0986, 1.0986], dtype=float32)
    """

    def loss(context: Context, outputs: Tensors) -> Tensors:
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(context.batch[labels], tf.int32),
            logits=tf.cast(outputs[logits], tf.float32),
        )
        return {name: per_example}

    return loss
