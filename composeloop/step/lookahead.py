"""Lookahead (Zhang et al., 2019) over any apply stage: slow weights pulled towards the fast ones every k updates.

The wrapped stage (the fast optimizer) updates the weights as usual. After every k-th
applied update the slow weights move ``alpha`` of the way towards the fast ones and the
fast weights are reset to them::

    slow <- slow + alpha * (fast - slow);  fast <- slow

The slow weights start at the weights before the first update (taken then, not when the
step is compiled, so weights loaded after compiling count). The wrapped stage's own state
(Adam's moments) carries on across syncs, as in the paper and optax. The slow weights and
the update count are the stage's ``variables``: checkpoints hold them and a resume is exact,
mid-cycle included. Evaluation between syncs sees the fast weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from composeloop.step.apply import Apply
from composeloop.step.wrapping import CopyingWrapper, read


class Lookahead(CopyingWrapper):
    """An apply stage: the inner stage's update, then a sync every `k` updates.

    Build it with `lookahead`.

    Attributes:
      k: updates between syncs.
      alpha: the slow weights' step towards the fast ones.
      slow: one slow copy per variable of the group (after `build`).
      count: the updates applied so far (an int64 variable).
    """

    kind = "lookahead"

    def __init__(self, inner: Apply, k: int, alpha: float) -> None:
        super().__init__(inner)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"lookahead: k must be an integer >= 1, got {k!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= 1:
            raise ValueError(f"lookahead: alpha must be in (0, 1], got {alpha!r}")
        self.k, self.alpha = k, float(alpha)

    @property
    def slow(self) -> list[tf.Variable]:
        """The slow weights, one per variable."""
        return self.copies

    # Unconditional assigns through tf.where, no tf.cond: a tf.cond branch that assigns a
    # mirrored variable fails in a replica context, and these hooks must not depend on the
    # context the engine gives them. It costs a pass over the weights at every update.

    def _before(self, variables: Sequence[Any]) -> None:
        first = tf.equal(self.count.read_value(), 0)
        for slow, variable in zip(self.slow, variables, strict=True):
            slow.assign(tf.where(first, read(variable), slow.read_value()))

    def _after(self, variables: Sequence[Any]) -> None:
        count = self.count.read_value() + 1
        self.count.assign(count)
        sync = tf.equal(count % self.k, 0)
        for slow, variable in zip(self.slow, variables, strict=True):
            old, fast = slow.read_value(), read(variable)
            new = old + tf.cast(self.alpha, old.dtype) * (fast - old)
            slow.assign(tf.where(sync, new, old))
            variable.assign(tf.where(sync, new, fast))


def lookahead(apply: Apply, k: int = 5, alpha: float = 0.5) -> Lookahead:
    """Wraps any apply stage in Lookahead: every `k` updates, slow += alpha * (fast - slow); fast = slow.

    Args:
      apply: the fast optimizer's apply stage, e.g. ``optimizer_apply(keras.optimizers.Adam(1e-3))``.
      k: updates between syncs (>= 1).
      alpha: the slow step, in (0, 1]; 1 makes lookahead the identity.

    Returns:
      An apply stage whose state (the inner stage's, the slow weights, the count) is
      checkpointed with the program.

    Raises:
      ValueError: `k` < 1 or `alpha` outside (0, 1].

    Example:
      >>> phase = attrs.evolve(phase, apply=lookahead(phase.apply, k=5, alpha=0.5))
    """
    return Lookahead(apply, k, alpha)
