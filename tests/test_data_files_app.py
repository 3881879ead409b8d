"""data=tfrecord and data=images through the application: config keys, runs, bad input in one line.

The runs here are one process, in this process (`composeloop.app.run`, the code the CLI
runs); two workers each reading their own shards, stopped and resumed through the command
line, are test_stops'. A run over shards must equal the in-memory run of the same examples
in the same order (`streams.stream_order`), fed to the same application as `Datasets`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_cli import assert_one_line_error, cli
from test_streams import examples, write, write_shards

from composeloop.app import Parts, load_config, run
from composeloop.errors import ConfigError, DataError
from composeloop.parts import datafiles, streams
from composeloop.parts.data import Datasets
from composeloop.parts.images import png_bytes

COUNTS = (30, 50, 40, 40)  # training examples in four shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("shards")
    write_shards(directory, COUNTS, validation=(30,), seed=2)
    return directory


def tfrecord(shards: Path, *more: str) -> list[str]:
    files = [f"data.files={shards / 'train-*.tfrecord'}", f"data.val_files={shards / 'val-*.tfrecord'}"]
    return ["data=tfrecord", *files, "data.batch_size=16", "train.epochs=2", "optimizer=sgd", *more]


def weights(directory: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(directory / "model.keras").get_weights()


def test_file_keys_are_required_by_their_source_and_refused_by_the_others(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.files: data=tfrecord needs data.files='shards/train-\*.tfrecord'$"):
        load_config(["data=tfrecord"])
    with pytest.raises(ConfigError, match=r"^data.directory: data=images needs data.directory=DIR$"):
        load_config(["data=images"])
    with pytest.raises(ConfigError, match=r"^data.val_files: only data=tfrecord reads it \(this is data=digits\)"):
        load_config(["data.val_files=a*.tfrecord"])
    with pytest.raises(ConfigError, match=r"^data.image_size: must be \[height, width\], each in \[1, 8192\]"):
        load_config(["data=images", "data.directory=x", "data.image_size=[8]"])
    with pytest.raises(ConfigError, match=r"^strategy.connect_timeout_s: must be in \(0, 86400\], got 0"):
        load_config(["strategy=multi_worker", "strategy.connect_timeout_s=0"])
    assert load_config(["strategy=multi_worker", "strategy.cluster=slurm"]).strategy.cluster.value == "slurm"


def test_a_tfrecord_run_equals_the_in_memory_run_of_the_same_examples_in_stream_order(tmp_path, shards):
    summary = run(load_config(tfrecord(shards)), tmp_path / "files")
    assert (summary["status"], summary["steps"]) == ("completed", 2 * 10)  # 160 examples in batches of 16
    assert {"val_loss", "val_accuracy"} <= set(summary["metrics"])

    files = datafiles.tfrecord_files(str(shards / "train-*.tfrecord"))
    x, y = streams.read_all(files)

    def in_memory(epoch: int) -> tf.data.Dataset:
        order = streams.stream_order(files, 0, epoch)
        return tf.data.Dataset.from_tensor_slices({"x": x[order], "y": y[order]}).batch(16)

    data = Datasets(in_memory, example_shape=(4,), num_classes=files.num_classes, examples=files.examples)
    run(load_config(tfrecord(shards)), tmp_path / "arrays", parts=Parts(data=data))
    for a, b in zip(weights(tmp_path / "files"), weights(tmp_path / "arrays"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_an_image_folder_trains_with_its_classes_and_a_seeded_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    for label, name in enumerate(("ant", "bee", "cat")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for index in range(10):
            pixels = np.clip(rng.normal(60 + 60 * label, 20, (10, 12, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "images" / name / f"{index}.png").write_bytes(png_bytes(pixels))
    overrides = ["data=images", f"data.directory={tmp_path / 'images'}", "data.image_size=[8,8]"]
    summary = run(load_config([*overrides, "data.batch_size=8", "train.epochs=2"]), tmp_path / "run")
    assert (summary["status"], summary["steps"]) == ("completed", 2 * 3)  # 24 training images, 6 validate
    assert summary["metrics"]["val_accuracy"] >= 0.0
    assert weights(tmp_path / "run")[0].shape[0] == 8 * 8 * 3  # the MLP flattens RGB 8x8 images
    train, validation = datafiles.split_images(datafiles.image_files(tmp_path / "images", (8, 8)), 0.2, seed=0)
    assert (len(train.paths), len(validation.paths)) == (24, 6) and not set(train.paths) & set(validation.paths)


def test_a_record_of_another_shape_found_while_training_is_one_data_error_naming_the_file(tmp_path, shards):
    bad = tmp_path / "shards"
    bad.mkdir()
    x, y = examples(40)
    write(bad / "a.tfrecord", x, y)
    datafiles.tfrecord_files(str(bad / "a.tfrecord"))  # checked: its first record is what the others must be
    with tf.io.TFRecordWriter(str(bad / "a.tfrecord")) as writer:  # record 30 has 5 features
        for index in range(40):
            features = np.zeros(5, np.float32) if index == 30 else x[index]
            record = {
                "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.serialize_tensor(features).numpy()])),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y[index])])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=record)).SerializeToString())
    config = load_config(["data=tfrecord", f"data.files={bad / 'a.tfrecord'}", "data.batch_size=8", "train.epochs=1"])
    with pytest.raises(DataError) as raised:
        run(config, tmp_path / "run")
    assert str(raised.value) == (
        f"data.files: {bad / 'a.tfrecord'} holds a record whose x has shape (5), not (4) as its other records; "
        "every record of a data set must have one shape"
    )


@pytest.mark.slow
def test_a_bad_data_file_is_one_line_from_the_cli_and_leaves_no_run_directory(tmp_path):
    (tmp_path / "train-0.tfrecord").write_bytes(b"not a TFRecord file at all")
    result = cli("data=tfrecord", "data.files=train-*.tfrecord", "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(result, "data.files: train-0.tfrecord is not a TFRecord file")
    assert not (tmp_path / "run").exists()


def test_the_batch_size_must_split_over_the_replicas_when_workers_read_their_own_files(shards):
    files = datafiles.tfrecord_files(str(shards / "train-*.tfrecord"))
    streams.check_batch_size(files, 33, workers=1)
    streams.check_batch_size(files, 32, workers=2, replicas_per_worker=2)
    with pytest.raises(
        ValueError, match=r"^33 must be a multiple of the 4 replicas when 2 workers each read their own "
    ):
        streams.check_batch_size(files, 33, workers=2, replicas_per_worker=2)
    streams.check_batch_size(files, 33, workers=8)  # fewer files than workers: DATA sharding splits any batch
    assert streams.sharding(files, 8).startswith("data: 4 file(s) for 8 workers: sharded by DATA")
