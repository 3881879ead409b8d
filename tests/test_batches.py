"""The in-memory input pipeline (`parts.data.batches`): both ways of shuffling give the
same batches, arrays are converted once while they live, and a resume skips into the
same order."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from composeloop.parts import data as datasets


def arrays(n: int = 23):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int32)  # y[i] == i: a batch's labels are its indices
    return x, y


def read(dataset):
    return [{key: value.numpy() for key, value in batch.items()} for batch in dataset]


@pytest.mark.parametrize("skip", [0, 2])
def test_whole_epoch_and_per_batch_gathers_give_the_same_batches(monkeypatch, skip):
    x, y = arrays()
    whole = read(datasets.batches(x, y, 5, seed=3, epoch=4).skip(skip))
    monkeypatch.setattr(datasets, "WHOLE_EPOCH_BYTES", 0)  # force the per-batch gather
    per_batch = read(datasets.batches(x, y, 5, seed=3, epoch=4).skip(skip))
    assert [len(b["y"]) for b in whole] == [len(b["y"]) for b in per_batch] == [5, 5, 5, 5, 3][skip:]
    for a, b in zip(whole, per_batch, strict=True):
        np.testing.assert_array_equal(a["y"], b["y"])
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["x"], x[a["y"]])
    order = datasets.epoch_order(len(x), 3, 4)
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in whole]), order[5 * skip :])


def test_arrays_are_converted_once_while_they_live():
    x, y = arrays()
    first = datasets._as_tensor(x)
    assert datasets._as_tensor(x) is first
    other = x.copy()
    other[0, 0] = -1.0
    assert float(datasets._as_tensor(other)[0, 0]) == -1.0  # another array, its own tensor
    key = id(other)
    del other
    gc.collect()
    assert key not in datasets._TENSORS  # dropped with its array
