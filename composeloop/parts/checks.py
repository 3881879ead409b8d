"""Checks of data before training: non-finite features, and train/validation class sets.

This module owns the checks that catch data which loads but lies: features holding NaN or
Inf (a `DataError` naming the array, or the batch and feature, and how many values), and a
validation set whose classes differ from the training set's (a note to show). Arrays are
checked whole, once, at load; a streamed `tf.data.Dataset` only in its first batches (the
NaN policy of the training loop catches the rest). Loading and batching belong to
`composeloop.parts.data`; labels against the model's classes to `data.check_labels`.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from composeloop.errors import DataError

_SHOWN_CLASSES = 6
_CONSEQUENCE = "training on them gives NaN losses"


class DataWarning(UserWarning):
    """Data that loads and trains, but probably not as meant (one line, names the source)."""


def nonfinite_counts(x: np.ndarray) -> tuple[int, int]:
    """How many values of `x` are NaN and how many infinite; (0, 0) for non-float arrays.

    One float32 sum decides the common case without a temporary array (a NaN or Inf makes
    the sum non-finite); only a non-finite sum, or a finite array whose sum overflows,
    pays for counting.
    """
    if x.dtype.kind not in "fc" or x.size == 0:
        return 0, 0
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(x.sum()):
            return 0, 0
    return int(np.count_nonzero(np.isnan(x))), int(np.count_nonzero(np.isinf(x)))


def check_finite(x: np.ndarray, name: str) -> None:
    """Raises a `DataError` when `x` holds NaN or Inf; `name` says where (e.g. the file and array).

    Example:
      >>> check_finite(np.array([[0.0, np.nan]]), "data.path: a.npz array 'x_train'")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      composeloop.errors.DataError: data.path: a.npz array 'x_train' holds 1 non-finite value (1 NaN, ...
    """
    nans, infs = nonfinite_counts(x)
    if nans or infs:
        examples = len(x) if x.ndim else 1
        rows = int(np.count_nonzero(~np.isfinite(x.reshape(examples, -1)).all(axis=1)))
        raise DataError(f"{name} holds {_values(nans, infs)} in {rows} of its {examples} examples; {_CONSEQUENCE}")


def _values(nans: int, infs: int) -> str:
    count = nans + infs
    return f"{count} non-finite value{'s' if count > 1 else ''} ({nans} NaN, {infs} infinite)"


def _listed(classes: Sequence[int]) -> str:
    shown = ", ".join(str(c) for c in classes[:_SHOWN_CLASSES])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > _SHOWN_CLASSES else "")


def class_set_difference(y_train: np.ndarray, y_val: np.ndarray, source: str) -> str | None:
    """A one-line note when train and validation labels hold different classes, else None.

    A note, not an error: a small validation set may lack a rare class, and a split may
    hold classes out on purpose. Returned rather than warned, so that the application
    prints it in its own one-line format and records it with the run; `warn_on_class_sets`
    is the same check as a Python warning, for scripts.

    Example:
      >>> class_set_difference(np.array([0, 1, 2]), np.array([0, 3]), "a.npz")  # doctest: +ELLIPSIS
      'a.npz: train and validation hold different classes: validation has classes train never shows (3); ...'
    """
    train, val = set(np.unique(y_train).tolist()), set(np.unique(y_val).tolist())
    if train == val:
        return None
    parts = []
    if val - train:
        parts.append(f"validation has classes train never shows ({_listed(sorted(val - train))})")
    if train - val:
        parts.append(f"train has classes validation lacks ({_listed(sorted(train - val))})")
    return f"{source}: train and validation hold different classes: {'; '.join(parts)}"


def warn_on_class_sets(y_train: np.ndarray, y_val: np.ndarray, source: str) -> str | None:
    """`class_set_difference` as a `DataWarning` (when there is a difference); returns the note.

    `-W error::composeloop.parts.checks.DataWarning` turns it into an error.
    """
    note = class_set_difference(y_train, y_val, source)
    if note:
        warnings.warn(note, DataWarning, stacklevel=2)
    return note


def check_first_batches(dataset: Any, batches: int = 4, source: str = "data") -> int:
    """Reads the first `batches` batches of `dataset` and raises on NaN or Inf features.

    For streamed data (files, images) that cannot be checked whole before training; the
    training loop's NaN policy catches what comes later. Every floating tensor of a batch
    is checked (labels are integers); nested dicts and tuples are named by their path.

    Args:
      dataset: a `tf.data.Dataset` (or any iterable of batches of tensors or arrays).
      batches: how many batches to read, from the start.
      source: what the message names first (the config key or file).

    Returns:
      How many batches were read (fewer when the dataset is shorter).

    Raises:
      DataError: a batch holds non-finite features (names the batch, feature and count).

    Example:
      >>> import tensorflow as tf
      >>> features = np.array([[0.0], [1.0], [np.inf]], np.float32)
      >>> dataset = tf.data.Dataset.from_tensor_slices({"x": features}).batch(2)
      >>> check_first_batches(dataset, 4, "data.path: train/")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      composeloop.errors.DataError: data.path: train/: batch 1 feature 'x' holds 1 non-finite value
      (0 NaN, 1 infinite); ...
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    # Read to the end of what is taken: a tf.data iterator dropped mid-stream can deadlock the
    # process when it is collected later (a generator's prefetch thread waiting for the GIL
    # that the collecting thread holds), so the first bad batch is reported after the loop.
    first = dataset.take(batches) if hasattr(dataset, "take") else itertools.islice(dataset, batches)
    read, problem = 0, None
    for index, batch in enumerate(first):
        read += 1
        if problem is None:
            problem = _first_nonfinite(batch, index)
    if problem is not None:
        raise DataError(f"{source}: {problem}; {_CONSEQUENCE}")
    return read


def _first_nonfinite(batch: Any, index: int) -> str | None:
    """What is wrong with batch `index`: the first feature holding NaN or Inf, or None."""
    for name, value in _named_leaves(batch):
        nans, infs = nonfinite_counts(np.asarray(value))
        if nans or infs:
            return f"batch {index} feature '{name}' holds {_values(nans, infs)}"
    return None


def _named_leaves(batch: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(batch, dict):
        return [leaf for key, value in batch.items() for leaf in _named_leaves(value, f"{prefix}{key}/")]
    if isinstance(batch, (tuple, list)):
        return [leaf for i, value in enumerate(batch) for leaf in _named_leaves(value, f"{prefix}{i}/")]
    for part in ("flat_values", "values"):  # tf.RaggedTensor, tf.SparseTensor
        if hasattr(batch, part) and hasattr(batch, "dtype"):
            batch = getattr(batch, part)
            break
    return [(prefix.rstrip("/") or "features", batch)]


def check_streamed(data: Any, batches: int, source: str) -> None:
    """Checks the first `batches` batches of streamed data for NaN/Inf features (0: no check).

    The hook the application calls for every data source it loads: arrays
    (`parts.data.ArrayData`) were checked whole when loaded, so only streams
    (`parts.data.Datasets`: a user's, TFRecord, image directories) are read here, epoch 0's
    training batches and the validation batches; the training loop's NaN policy catches
    what comes later. Files read per worker are checked as one worker reading them all,
    so every worker checks the same first batches.

    Raises:
      DataError: ``"<source>: train: batch 1 feature 'x' holds 3 non-finite values ..."``.

    Example:
      >>> import tensorflow as tf
      >>> from composeloop.parts.data import Datasets
      >>> stream = tf.data.Dataset.from_tensor_slices({"x": [[0.0], [np.nan]]}).batch(1)
      >>> check_streamed(Datasets(lambda epoch: stream), 4, "data._target_ (my.data)")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      composeloop.errors.DataError: data._target_ (my.data): train: batch 1 feature 'x' holds 1 non-finite value
      (1 NaN, 0 infinite); ...
    """
    from composeloop.engine.sources import PerWorker
    from composeloop.parts.data import Datasets

    if not isinstance(data, Datasets) or batches < 1:
        return
    streams = {"train": data.train(0), "validation": data.validation() if data.validation else None}
    for split, stream in streams.items():
        if stream is not None:
            whole = stream.as_one_pipeline() if isinstance(stream, PerWorker) else stream
            check_first_batches(whole, batches, f"{source}: {split}")
