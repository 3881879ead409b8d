"""Invariants 7 and 8 for the built-in metrics, as Hypothesis properties (eager, no tracing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from composeloop import step as cs
from composeloop.testing import check_batch_split_invariance, check_metric_range
from composeloop.testing.strategies import float32s, splits

pytestmark = pytest.mark.property
CLASSES = 3


@st.composite
def scored_batches(draw, max_size: int = 24):
    """Labels, logits (huge values included) and per-example losses for one batch."""
    size = draw(st.integers(1, max_size))
    logits = draw(hnp.arrays(np.float32, (size, CLASSES), elements=float32s()))
    labels = draw(hnp.arrays(np.int32, (size,), elements=st.integers(0, CLASSES - 1)))
    losses = draw(hnp.arrays(np.float32, (size,), elements=st.floats(0, 1e6, width=32)))
    return {"y": labels}, {"logits": logits}, {"loss": losses, "aux": losses * np.float32(0.5)}


METRICS = [
    cs.mean_loss(),
    cs.mean_loss("aux", of="aux"),
    cs.accuracy(),
    cs.mean_output("mean_logit", "logits"),
]


@given(scored_batches(), st.sampled_from(METRICS), st.data())
def test_any_split_merged_in_any_order_gives_the_whole_batch(scored, metric, data):
    """Invariant 7: pieces (empty ones too) merged in order, reversed, right-first == whole."""
    batch, outputs, losses = scored
    sizes = data.draw(splits(len(batch["y"]), max_parts=5))
    check_batch_split_invariance(metric, batch, sizes, outputs=outputs, losses=losses)


@given(scored_batches())
def test_results_stay_in_range_and_empty_reads_zero(scored):
    """Invariant 8: the empty state is zeros and reads finite; accuracy in [0, 1], losses >= 0."""
    batch, outputs, losses = scored
    check_metric_range(cs.accuracy(), batch, 0.0, 1.0, outputs=outputs)
    check_metric_range(cs.mean_loss(), batch, 0.0, np.inf, losses=losses)
