"""The error every checker raises, and the wording of a numeric difference.

This module owns `InvariantViolation` (an `AssertionError`, so pytest reports it as a
failed test) and the helpers that turn two arrays into one sentence: which element differs,
by how much, and against which tolerance. It runs no steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class InvariantViolation(AssertionError):
    """An invariant of a step does not hold; the message says which, where and by how much.

    Attributes:
      invariant: the invariant's short name, e.g. ``"replica invariance (3)"``.
    """

    def __init__(self, invariant: str, what: str, rule: str) -> None:
        super().__init__(f"{invariant} violated: {what}\n  the invariant: {rule}")
        self.invariant = invariant


def as_array(value: Any) -> np.ndarray:
    """A tensor, variable or array-like as a float64 numpy array."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value, dtype=np.float64)


def difference(expected: Any, actual: Any, rtol: float, atol: float) -> str | None:
    """None if `actual` is within ``atol + rtol * |expected|`` of `expected` everywhere
    (equal non-finite values match); otherwise one sentence naming the worst element."""
    expected, actual = as_array(expected), as_array(actual)
    if expected.shape != actual.shape:
        return f"shapes differ: expected {expected.shape}, got {actual.shape}"
    same = (expected == actual) | (np.isnan(expected) & np.isnan(actual))
    with np.errstate(invalid="ignore", over="ignore"):
        gap = np.abs(actual - expected)
        close = same | (gap <= atol + rtol * np.abs(expected))
    if close.all():
        return None
    gap = np.where(close, 0.0, np.where(np.isnan(gap), np.inf, gap))
    index = np.unravel_index(int(np.argmax(gap)), gap.shape) if gap.shape else ()
    where = f" at index {tuple(int(i) for i in index)}" if index else ""
    size = "by NaN" if np.isnan(expected[index]) or np.isnan(actual[index]) else f"by {float(gap[index]):.6g}"
    return (
        f"differs {size}{where} (expected {float(expected[index]):.9g}, "
        f"got {float(actual[index]):.9g}; tolerance {atol:g} + {rtol:g} * |expected|), "
        f"{int((~close).sum())} of {close.size} elements off"
    )


def nonfinite_at(value: Any) -> str | None:
    """None if every element is finite; otherwise where the first non-finite one is."""
    array = as_array(value)
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{array[index]} at index {index}" if index else f"{float(array)}"
