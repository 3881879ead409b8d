"""Data that loads but lies (`composeloop.parts.checks`, `data.load_npz`): NaN/Inf features,
labels beyond int32, arrays that are no example arrays, and different train/validation classes.

Arrays are tiny; TensorFlow is imported only by the streamed-batches test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_data import N_TEST, N_TRAIN, SHAPE, load_error, npz_arrays, write_npz

from composeloop.errors import DataError
from composeloop.parts import checks
from composeloop.parts import data as datasets


def floats(examples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((examples, *SHAPE))


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_all_nonfinite_training_features_are_refused(tmp_path, fill):
    message = load_error(write_npz(tmp_path, x_train=np.full((N_TRAIN, *SHAPE), fill, np.float32)))
    values = N_TRAIN * SHAPE[0] * SHAPE[1]
    assert "'x_train'" in message and f"holds {values} non-finite values" in message
    assert f"in {N_TRAIN} of its {N_TRAIN} examples" in message


def test_a_few_nonfinite_validation_features_are_counted(tmp_path):
    x_test = floats(N_TEST)
    x_test[2, 0, 0] = x_test[2, 1, 1] = np.nan
    x_test[5, 3, 3] = -np.inf
    message = load_error(write_npz(tmp_path, x_test=x_test, x_train=floats(N_TRAIN)))
    assert "'x_test' holds 3 non-finite values (2 NaN, 1 infinite) in 2 of its 8 examples" in message


def test_float64_features_beyond_float32_are_refused(tmp_path):
    x_train = floats(N_TRAIN)
    x_train[0, 0, 0] = 1e300
    message = load_error(write_npz(tmp_path, x_train=x_train, x_test=floats(N_TEST)))
    assert "'x_train' holds values beyond float32's range (up to 1e+300)" in message


def test_finite_float_features_load(tmp_path):
    data = datasets.load_npz(write_npz(tmp_path, x_train=floats(N_TRAIN), x_test=floats(N_TEST, seed=1)))
    assert data.x_train.dtype == np.float32 and np.isfinite(data.x_train).all()


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.full(N_TRAIN, 2**32, np.int64), "beyond 2147483647 (4294967296)"),  # int32 would wrap to 0
        (np.full(N_TRAIN, 1e20), "beyond 2147483647"),  # int64 would overflow to a negative label
        (np.full(N_TRAIN, np.nan), "integer class ids"),
    ],
)
def test_labels_int32_cannot_hold_are_refused(tmp_path, labels, expected):
    message = load_error(write_npz(tmp_path, y_train=labels))
    assert "'y_train'" in message and expected in message


@pytest.mark.parametrize(
    ("x_train", "expected"),
    [
        (np.float32(1.0), "must hold examples along its first axis, each with values; got shape ()"),
        (np.zeros((N_TRAIN, 0)), "got shape (20, 0)"),
        (np.array([None] * N_TRAIN, dtype=object), "holds Python objects"),
    ],
)
def test_arrays_that_are_no_examples_are_refused(tmp_path, x_train, expected):
    path = tmp_path / "odd.npz"
    np.savez(path, **{**npz_arrays(), "x_train": x_train}, allow_pickle=True)
    message = load_error(path)
    assert "'x_train'" in message and expected in message


def test_a_lone_npy_array_is_not_an_npz(tmp_path):
    path = tmp_path / "lone.npz"
    with open(path, "wb") as handle:
        np.save(handle, floats(3))
    message = load_error(path)
    assert "lone.npz holds one array, not an .npz" in message
    message = load_error(tmp_path)
    assert "is not a file" in message


def test_different_train_and_validation_classes_give_a_note_not_an_error(tmp_path):
    y_train, y_test = np.arange(N_TRAIN) % 3, np.arange(N_TEST) % 4  # class 3 only in validation
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loader itself stays quiet: the application shows the note
        data = datasets.load_npz(write_npz(tmp_path, y_train=y_train, y_test=y_test))
    note = checks.class_set_difference(data.y_train, data.y_val, "data.path: data.npz")
    assert note == (
        "data.path: data.npz: train and validation hold different classes: validation has classes train never shows (3)"
    )
    assert checks.class_set_difference(data.y_train, data.y_train[::-1], "data") is None
    with pytest.warns(
        checks.DataWarning, match="train has classes validation lacks \\(2, 3, 4, 5, 6, 7, ... \\(18 in all\\)\\)"
    ):
        assert checks.warn_on_class_sets(np.arange(20), np.arange(2), "data").startswith("data: train and")


def test_nonfinite_counts_decide_by_one_sum_and_count_only_when_needed():
    assert checks.nonfinite_counts(np.arange(5)) == (0, 0)  # integers are always finite
    assert checks.nonfinite_counts(np.zeros((0, 3), np.float32)) == (0, 0)
    big = np.full(10, 3e38, np.float32)  # finite, but the float32 sum overflows
    assert checks.nonfinite_counts(big) == (0, 0)
    assert checks.nonfinite_counts(np.array([np.nan, np.inf, -np.inf, 1.0], np.float16)) == (1, 2)
    checks.check_finite(big, "x")
    with pytest.raises(DataError, match="^x holds 1 non-finite value \\(1 NaN, 0 infinite\\) in 1 of its 3 examples"):
        checks.check_finite(np.array([0.0, np.nan, 1.0]), "x")


def test_the_first_streamed_batches_are_checked():
    import tensorflow as tf

    x = np.random.default_rng(0).random((12, 3)).astype(np.float32)
    x[7, 1] = np.nan  # batch 1 of batches of 4
    x[10, 0] = np.inf  # batch 2
    labels = np.arange(12, dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices({"x": x, "y": labels}).batch(4)
    assert checks.check_first_batches(dataset, 1, "data.path: train/") == 1  # batch 1 is not read
    with pytest.raises(DataError) as caught:
        checks.check_first_batches(dataset, 3, "data.path: train/")
    assert str(caught.value) == (
        "data.path: train/: batch 1 feature 'x' holds 1 non-finite value (1 NaN, 0 infinite); "
        "training on them gives NaN losses"
    )
    nested = tf.data.Dataset.from_tensor_slices(((x[:4], x[8:]), labels[8:])).batch(4)
    with pytest.raises(DataError, match="batch 0 feature '0/1' holds 1 non-finite value \\(0 NaN, 1 infinite\\)"):
        checks.check_first_batches(nested, 5)
    clean = tf.data.Dataset.from_tensor_slices({"x": x[:4], "y": labels[:4]}).batch(2)
    assert checks.check_first_batches(clean, 10) == 2  # a shorter dataset is read to its end
    with pytest.raises(ValueError, match="batches must be >= 1"):
        checks.check_first_batches(clean, 0)


def test_streamed_data_is_checked_by_the_hook_the_app_calls():
    """`checks.check_streamed`: what `composeloop.app.run` calls for any data source, with data.check_batches."""
    import tensorflow as tf

    x = np.random.default_rng(0).random((12, 3)).astype(np.float32)
    bad = x.copy()
    bad[5, 2] = np.nan  # batch 1 of batches of 4

    def stream(features):
        return lambda *epoch: tf.data.Dataset.from_tensor_slices({"x": features, "y": np.zeros(12, np.int32)}).batch(4)

    clean = datasets.Datasets(stream(x), stream(x), (3,), 2)
    checks.check_streamed(clean, 4, "data._target_ (my.data)")
    for data, where in (
        (datasets.Datasets(stream(bad), stream(x), (3,), 2), "train"),
        (datasets.Datasets(stream(x), stream(bad), (3,), 2), "validation"),
    ):
        with pytest.raises(DataError, match=f"^data._target_ \\(my.data\\): {where}: batch 1 feature 'x' holds 1 "):
            checks.check_streamed(data, 2, "data._target_ (my.data)")
        checks.check_streamed(data, 1, "data._target_ (my.data)")  # batch 1 is not read
        checks.check_streamed(data, 0, "data._target_ (my.data)")  # data.check_batches=0: off
    checks.check_streamed(datasets.synthetic(examples=16), 4, "data")  # arrays: checked at load already


def test_files_read_per_worker_are_checked_as_one_pipeline():
    """Every worker checks the same first batches: the whole stream, not its own share."""
    import tensorflow as tf

    from composeloop.engine.sources import PerWorker

    x = np.zeros((8, 3), np.float32)
    x[5, 0] = np.inf  # in worker 1's half of two, in batch 2 of the whole stream of batches of 2

    def make(worker: int, workers: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices({"x": np.array_split(x, workers)[worker]}).batch(2)

    data = datasets.Datasets(lambda epoch: PerWorker(make, steps=4), example_shape=(3,), num_classes=2)
    with pytest.raises(DataError, match="^data.files: train: batch 2 feature 'x' holds 1 non-finite value"):
        checks.check_streamed(data, 4, "data.files")
    checks.check_streamed(data, 2, "data.files")  # batch 2 is not read


def test_streamed_data_is_labels_unchecked_but_needs_classes():
    """Fails on the old code: `check_labels` read `y_train` of a Datasets (AttributeError traceback)."""
    streamed = datasets.Datasets(lambda epoch: [], None, (3,), 0)
    datasets.check_labels(streamed, 4)
    with pytest.raises(DataError, match="^model.num_classes: the data declare no classes"):
        datasets.check_labels(streamed, 0)


STREAM_WITH_NAN = """
import numpy as np
import tensorflow as tf
from composeloop.parts.data import Datasets


def stream():
    x = np.random.default_rng(0).random((16, 4)).astype(np.float32)
    x[9, 1] = np.inf  # batch 2 of batches of 4
    y = np.arange(16, dtype=np.int32) % 2
    batches = lambda *epoch: tf.data.Dataset.from_tensor_slices({"x": x, "y": y}).batch(4)
    return Datasets(batches, batches, (4,), 2)
"""


@pytest.mark.slow
def test_a_stream_with_nonfinite_features_is_refused_before_training_through_the_cli(tmp_path, monkeypatch):
    """Fails on the old code: the stream trained until the NaN policy stopped it, naming no batch or feature."""
    import os

    from test_cli import assert_one_line_error, cli

    (tmp_path / "nanstream.py").write_text(STREAM_WITH_NAN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = cli("data._target_=nanstream.stream", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, "data._target_ (nanstream.stream): train: batch 2 feature 'x' holds 1 non-finite")
    assert not (tmp_path / "run").exists()
