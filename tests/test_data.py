"""The datasets (`composeloop.parts.data`) and the data/model builders of `composeloop.config.build`.

Arrays are tiny; TensorFlow is imported only by the `batches` and `build_model` tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from composeloop.config import build
from composeloop.config.schema import DataConfig, DataSource, ModelConfig, ModelName
from composeloop.errors import ConfigError, DataError
from composeloop.parts import data as datasets

DIGITS = 1797
SHAPE = (6, 6)
N_TRAIN, N_TEST = 20, 8


def npz_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A valid MNIST-style set: uint8 images, integer labels 0..9."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(N_TRAIN, *SHAPE), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=N_TRAIN),
        "x_test": rng.integers(0, 256, size=(N_TEST, *SHAPE), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=N_TEST),
    }


def write_npz(directory, name: str = "data.npz", **changes) -> str:
    """Writes `npz_arrays()` with `changes` applied (a value of None drops the key)."""
    arrays = npz_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = directory / name
    np.savez(path, **arrays)
    return str(path)


def load_error(path) -> str:
    """The message of the DataError that `load_npz(path)` raises; it must be one line."""
    with pytest.raises(DataError) as caught:
        datasets.load_npz(path)
    message = str(caught.value)
    assert message.strip() and "\n" not in message, message
    return message


def as_numpy(dataset) -> list[dict[str, np.ndarray]]:
    return [{key: value.numpy() for key, value in batch.items()} for batch in dataset]


# ---------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_labels():
    data = datasets.digits()
    n_val = round(DIGITS * 0.2)
    assert data.x_train.shape == (DIGITS - n_val, 8, 8)
    assert data.x_val.shape == (n_val, 8, 8)
    assert data.y_train.shape == (DIGITS - n_val,) and data.y_val.shape == (n_val,)
    assert data.example_shape == (8, 8)
    for x in (data.x_train, data.x_val):
        assert x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert data.x_train.max() == 1.0  # scaled by 16, not by 255
    labels = np.concatenate([data.y_train, data.y_val])
    assert np.issubdtype(labels.dtype, np.integer)
    assert set(labels.tolist()) == set(range(10))
    assert data.num_classes == 10


@pytest.mark.parametrize("val_fraction", [0.001, 0.1, 0.5, 0.999])
def test_digits_split_sizes_follow_val_fraction(val_fraction):
    data = datasets.digits(val_fraction=val_fraction)
    assert len(data.x_val) == max(1, round(DIGITS * val_fraction))
    assert len(data.x_train) + len(data.x_val) == DIGITS
    assert len(data.x_train) > 0 and len(data.x_val) > 0
    assert len(data.y_train) == len(data.x_train) and len(data.y_val) == len(data.x_val)


def test_digits_split_is_deterministic_given_seed():
    a, b, other = datasets.digits(seed=3), datasets.digits(seed=3), datasets.digits(seed=4)
    for name in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.y_val, other.y_val)
    # Either seed splits the same examples: the sorted union is unchanged.
    everything = np.sort(np.concatenate([a.y_train, a.y_val]))
    np.testing.assert_array_equal(everything, np.sort(np.concatenate([other.y_train, other.y_val])))


# ---------------------------------------------------------------------------- load_npz


def test_load_npz_reads_and_scales(tmp_path):
    raw = npz_arrays()
    data = datasets.load_npz(write_npz(tmp_path))
    assert data.x_train.shape == (N_TRAIN, *SHAPE) and data.x_val.shape == (N_TEST, *SHAPE)
    assert data.x_train.dtype == np.float32 and data.x_val.dtype == np.float32
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    np.testing.assert_allclose(data.x_train, raw["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data.x_val, raw["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_train, raw["y_train"])
    np.testing.assert_array_equal(data.y_val, raw["y_test"])
    assert data.y_train.dtype == np.int32
    assert data.example_shape == SHAPE


def test_load_npz_accepts_column_labels_and_whole_float_labels(tmp_path):
    raw = npz_arrays()
    path = write_npz(tmp_path, y_train=raw["y_train"][:, None], y_test=raw["y_test"].astype(np.float32))
    data = datasets.load_npz(path)
    np.testing.assert_array_equal(data.y_train, raw["y_train"])
    np.testing.assert_array_equal(data.y_val, raw["y_test"])


def test_load_npz_missing_file(tmp_path):
    message = load_error(tmp_path / "nowhere.npz")
    assert "nowhere.npz" in message and "no such file" in message


def test_load_npz_not_an_npz(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    message = load_error(path)
    assert "noise.npz" in message and "not a readable .npz" in message


def test_load_npz_truncated_zip(tmp_path):
    whole = Path(write_npz(tmp_path, "whole.npz")).read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(whole[: len(whole) // 2])
    message = load_error(path)
    assert "truncated.npz" in message and "not a readable .npz" in message


def test_load_npz_corrupted_zip_member(tmp_path):
    whole = bytearray(Path(write_npz(tmp_path, "whole.npz")).read_bytes())
    middle = len(whole) // 3
    whole[middle : middle + 32] = bytes(32)  # inside x_train's stored bytes: a CRC mismatch
    path = tmp_path / "corrupted.npz"
    path.write_bytes(bytes(whole))
    message = load_error(path)
    assert "corrupted.npz" in message and "not a readable .npz" in message


def test_load_npz_corrupted_compressed_member(tmp_path):
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, **npz_arrays())
    whole = bytearray(path.read_bytes())
    middle = len(whole) // 3
    whole[middle : middle + 32] = np.random.default_rng(1).bytes(32)
    path.write_bytes(bytes(whole))
    load_error(path)


@pytest.mark.parametrize("key", datasets.NPZ_KEYS)
def test_load_npz_missing_key(tmp_path, key):
    message = load_error(write_npz(tmp_path, **{key: None}))
    assert f"lacks {key};" in message


def test_load_npz_length_mismatch_names_both_arrays(tmp_path):
    message = load_error(write_npz(tmp_path, y_train=np.zeros(N_TRAIN - 1, dtype=np.int64)))
    assert "x_train" in message and "y_train" in message
    assert str(N_TRAIN) in message and str(N_TRAIN - 1) in message


def test_load_npz_test_length_mismatch_names_both_arrays(tmp_path):
    message = load_error(write_npz(tmp_path, y_test=np.zeros(N_TEST + 2, dtype=np.int64)))
    assert "x_test" in message and "y_test" in message


def test_load_npz_example_shape_mismatch_names_both_shapes(tmp_path):
    x_test = np.zeros((N_TEST, 5, 5), dtype=np.uint8)
    message = load_error(write_npz(tmp_path, x_test=x_test))
    assert "x_train" in message and "x_test" in message
    assert str(SHAPE) in message and "(5, 5)" in message


def test_load_npz_non_integer_labels(tmp_path):
    message = load_error(write_npz(tmp_path, y_train=np.full(N_TRAIN, 0.5)))
    assert "y_train" in message and "integer" in message


def test_load_npz_negative_labels(tmp_path):
    y_test = np.arange(N_TEST) - 1
    message = load_error(write_npz(tmp_path, y_test=y_test))
    assert "y_test" in message and "negative" in message and "-1" in message


def test_load_npz_non_numeric_images(tmp_path):
    message = load_error(write_npz(tmp_path, x_train=np.full((N_TRAIN, *SHAPE), "a")))
    assert "x_train" in message


# ---------------------------------------------------------------------------- check_labels, synthetic


def test_check_labels():
    data = datasets.ArrayData(
        np.zeros((3, 2), np.float32),
        np.array([0, 1, 12], np.int32),
        np.zeros((1, 2), np.float32),
        np.array([3], np.int32),
    )
    assert data.num_classes == 13
    datasets.check_labels(data, 13)
    with pytest.raises(DataError, match="model.num_classes") as caught:
        datasets.check_labels(data, 10)
    assert "12" in str(caught.value) and "\n" not in str(caught.value)
    val_only = datasets.ArrayData(data.x_train, np.array([0, 1, 2], np.int32), data.x_val, np.array([5], np.int32))
    with pytest.raises(DataError, match="model.num_classes"):
        datasets.check_labels(val_only, 5)


@pytest.mark.parametrize(("examples", "shape", "classes"), [(64, (4, 4), 3), (40, (7,), 2), (100, (3, 5, 2), 10)])
def test_synthetic_shapes_and_classes(examples, shape, classes):
    data = datasets.synthetic(examples=examples, shape=shape, classes=classes, val_fraction=0.25, seed=1)
    assert len(data.x_train) + len(data.x_val) == examples
    assert len(data.x_val) == round(examples * 0.25)
    assert data.example_shape == shape and data.x_val.shape[1:] == shape
    assert data.x_train.dtype == np.float32
    assert data.y_train.dtype == np.int32
    labels = np.concatenate([data.y_train, data.y_val])
    assert labels.min() >= 0 and labels.max() < classes
    again = datasets.synthetic(examples=examples, shape=shape, classes=classes, val_fraction=0.25, seed=1)
    np.testing.assert_array_equal(data.x_train, again.x_train)


# ---------------------------------------------------------------------------- batches


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    np.testing.assert_array_equal(datasets.epoch_order(50, 1, 2), datasets.epoch_order(50, 1, 2))
    assert not np.array_equal(datasets.epoch_order(50, 1, 2), datasets.epoch_order(50, 1, 3))
    assert not np.array_equal(datasets.epoch_order(50, 1, 2), datasets.epoch_order(50, 2, 2))
    np.testing.assert_array_equal(np.sort(datasets.epoch_order(50, 1, 2)), np.arange(50))


def tiny_arrays(n: int = 23):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.int32)  # y[i] == i, so a batch's labels are its indices
    return x, y


def test_batches_cover_each_example_once_with_a_partial_last_batch():
    x, y = tiny_arrays(23)
    got = as_numpy(datasets.batches(x, y, 5, seed=0, epoch=0))
    assert all(set(batch) == {"x", "y"} for batch in got)
    assert [len(batch["y"]) for batch in got] == [5, 5, 5, 5, 3]
    seen = np.concatenate([batch["y"] for batch in got])
    np.testing.assert_array_equal(np.sort(seen), np.arange(23))
    for batch in got:  # features travel with their labels
        np.testing.assert_array_equal(batch["x"], x[batch["y"]])
        assert batch["x"].dtype == np.float32 and batch["y"].dtype == np.int32


def test_batches_order_is_a_pure_function_of_seed_and_epoch():
    x, y = tiny_arrays(23)

    def order(seed, epoch):
        return np.concatenate([b["y"] for b in as_numpy(datasets.batches(x, y, 4, seed=seed, epoch=epoch))])

    first = order(7, 1)
    np.testing.assert_array_equal(first, order(7, 1))
    np.testing.assert_array_equal(first, datasets.epoch_order(23, 7, 1))
    assert not np.array_equal(first, order(7, 2))
    assert not np.array_equal(first, order(8, 1))
    assert not np.array_equal(first, np.arange(23))


def test_batches_without_shuffle_keep_order():
    x, y = tiny_arrays(10)
    got = as_numpy(datasets.batches(x, y, 4, seed=5, epoch=9, shuffle=False))
    assert [len(b["y"]) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in got]), np.arange(10))
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in got]), x)


def test_batches_larger_than_the_data_give_one_batch():
    x, y = tiny_arrays(3)
    got = as_numpy(datasets.batches(x, y, 32, shuffle=False))
    assert len(got) == 1 and len(got[0]["y"]) == 3


# ---------------------------------------------------------------------------- build.load_data, build.build_model


def test_load_data_digits_uses_val_fraction_and_seed():
    data = build.load_data(DataConfig(source=DataSource.digits, val_fraction=0.5), seed=2)
    reference = datasets.digits(val_fraction=0.5, seed=2)
    np.testing.assert_array_equal(data.y_val, reference.y_val)


def test_load_data_synthetic_passes_its_settings():
    config = DataConfig(
        source=DataSource.synthetic,
        synthetic_examples=40,
        synthetic_shape=[3, 4],
        synthetic_classes=3,
        val_fraction=0.25,
    )
    data = build.load_data(config, seed=0)
    assert data.example_shape == (3, 4)
    assert len(data.x_train) + len(data.x_val) == 40
    assert max(data.y_train.max(), data.y_val.max()) < 3


def test_load_data_npz(tmp_path):
    data = build.load_data(DataConfig(source=DataSource.npz, path=write_npz(tmp_path)), seed=0)
    assert data.example_shape == SHAPE and len(data.x_val) == N_TEST


def test_load_data_npz_without_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        build.load_data(DataConfig(source=DataSource.npz, path=None), seed=0)


def test_load_data_npz_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="missing.npz"):
        build.load_data(DataConfig(source=DataSource.npz, path=str(tmp_path / "missing.npz")), seed=0)


def test_build_model_mlp_for_8x8():
    data = datasets.synthetic(examples=16, shape=(8, 8), classes=10, seed=0)
    model = build.build_model(ModelConfig(name=ModelName.mlp, width=8, depth=1, num_classes=10), data)
    assert model.built and model.variables
    assert tuple(model.output_shape) == (None, 10)
    assert model(data.x_val).shape == (len(data.x_val), 10)


def test_build_model_defaults_classes_to_the_data():
    data = datasets.ArrayData(
        np.zeros((4, 8, 8), np.float32),
        np.array([0, 1, 2, 3], np.int32),
        np.zeros((2, 8, 8), np.float32),
        np.array([0, 4], np.int32),
    )
    model = build.build_model(ModelConfig(name=ModelName.mlp, width=4, depth=1), data)
    assert tuple(model.output_shape) == (None, 5)


def test_build_model_cnn_on_1d_data_names_the_shape():
    data = datasets.synthetic(examples=16, shape=(5,), classes=3, seed=0)
    with pytest.raises(DataError) as caught:
        build.build_model(ModelConfig(name=ModelName.cnn, width=4, depth=1), data)
    message = str(caught.value)
    assert "(5,)" in message and "cnn" in message and "\n" not in message


def test_build_model_checks_labels_against_num_classes():
    data = datasets.synthetic(examples=40, shape=(4,), classes=10, seed=0)
    assert data.num_classes > 3
    with pytest.raises(DataError, match="model.num_classes=3"):
        build.build_model(ModelConfig(name=ModelName.mlp, width=4, depth=1, num_classes=3), data)


def test_too_few_examples_to_split_is_a_clear_error():
    with pytest.raises(DataError, match="1 examples are too few to split"):
        datasets.synthetic(examples=1)
