"""Hypothesis strategies for testing steps: gradients, batches, splits of a batch, seeds.

Values are float32 and reach the edges that break real code: huge (1e30, whose square
overflows float32), tiny and subnormal (1e-30, 1e-45, whose squares underflow), zero, and on
request NaN and infinities. Shapes stay small, because a property is about the invariant,
not the size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Exactly representable in float32 (Hypothesis refuses values an array would round).
EDGES = tuple(float(np.float32(v)) for v in (0.0, -0.0, 1e30, -1e30, 1e-30, -1e-30, 1e-45, 3e38))
HUGE = float(np.float32(3e38))
NONFINITE = (float("nan"), float("inf"), float("-inf"))


def float32s(*, huge: bool = True, nonfinite: bool = False) -> st.SearchStrategy[float]:
    """float32 values: ordinary, huge, tiny, subnormal and zero; NaN/Inf if `nonfinite`.

    Example:
      >>> from hypothesis import given, settings
      >>> @settings(max_examples=20, database=None)
      ... @given(float32s(nonfinite=True))
      ... def test_values(value):
      ...     assert np.float32(value) == value or np.isnan(value)
      >>> test_values()
    """
    bound = HUGE if huge else 1e3
    choices = [st.floats(-bound, bound, width=32), st.sampled_from([e for e in EDGES if abs(e) <= bound])]
    if nonfinite:
        choices.append(st.sampled_from(NONFINITE))
    return st.one_of(*choices)


@st.composite
def gradient_lists(
    draw: Any,
    *,
    min_tensors: int = 1,
    max_tensors: int = 4,
    max_side: int = 3,
    huge: bool = True,
    nonfinite: bool = False,
) -> list[np.ndarray]:
    """Lists of float32 gradient arrays of rank 0 to 2 (one per variable).

    Args:
      min_tensors: the fewest arrays.
      max_tensors: the most arrays.
      max_side: the largest size of any dimension.
      huge: include values up to 3e38 (else up to 1e3).
      nonfinite: plant at least one NaN or Inf somewhere.

    Example:
      >>> from hypothesis import given, settings
      >>> from composeloop.step import clip_by_global_norm
      >>> from composeloop.testing import check_global_norm_clip
      >>> @settings(max_examples=10, database=None)
      ... @given(gradient_lists(nonfinite=True))
      ... def test_my_clip(grads):
      ...     check_global_norm_clip(clip_by_global_norm(1.0), grads, 1.0)
      >>> test_my_clip()  # raises on the first drawn list that breaks the invariant
    """
    count = draw(st.integers(min_tensors, max_tensors))
    shapes = [draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=max_side)) for _ in range(count)]
    grads = [draw(hnp.arrays(np.float32, shape, elements=float32s(huge=huge))) for shape in shapes]
    if nonfinite:
        which = draw(st.integers(0, count - 1))
        flat = grads[which].reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(NONFINITE))
        grads[which] = flat.reshape(grads[which].shape)
    return grads


@st.composite
def batches(
    draw: Any,
    *,
    features: int = 5,
    classes: int = 3,
    min_size: int = 1,
    max_size: int = 24,
    bound: float = 10.0,
) -> dict[str, np.ndarray]:
    """Classification batches ``{"x": float32 (n, features), "y": int32 (n,)}``.

    Example:
      >>> from hypothesis import given, settings
      >>> @settings(max_examples=5, database=None)
      ... @given(batches(features=4, classes=10))
      ... def test_shapes(batch):
      ...     assert batch["x"].shape == (len(batch["y"]), 4) and 0 <= batch["y"].min() <= batch["y"].max() < 10
      >>> test_shapes()
    """
    size = draw(st.integers(min_size, max_size))
    x = draw(hnp.arrays(np.float32, (size, features), elements=st.floats(-bound, bound, width=32)))
    y = draw(hnp.arrays(np.int32, (size,), elements=st.integers(0, classes - 1)))
    return {"x": x, "y": y}


@st.composite
def splits(
    draw: Any, size: int, *, parts: int | None = None, max_parts: int = 4, allow_empty: bool = True
) -> list[int]:
    """Sizes of consecutive pieces that cut `size` examples (they add up to `size`).

    Args:
      size: examples to cut.
      parts: exactly this many pieces (e.g. the replica count); None: 1 to `max_parts`.
      allow_empty: whether a piece may hold no example.

    Example:
      >>> from hypothesis import given, settings
      >>> @settings(max_examples=20, database=None)
      ... @given(st.data())
      ... def test_split(data):
      ...     sizes = data.draw(splits(8, parts=2))  # e.g. for 2 replicas, one of them maybe empty
      ...     assert len(sizes) == 2 and sum(sizes) == 8
      >>> test_split()
    """
    count = parts if parts is not None else draw(st.integers(1, max_parts))
    if count == 1:
        return [size]
    if allow_empty:
        cuts = sorted(draw(st.lists(st.integers(0, size), min_size=count - 1, max_size=count - 1)))
    else:
        if size < count:
            raise ValueError(f"cannot cut {size} examples into {count} non-empty pieces")
        cuts = sorted(draw(st.lists(st.integers(1, size - 1), min_size=count - 1, max_size=count - 1, unique=True)))
    edges = [0, *cuts, size]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def seeds() -> st.SearchStrategy[int]:
    """Run seeds (non-negative int32)."""
    return st.integers(0, 2**31 - 1)
