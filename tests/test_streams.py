"""Data streamed from files: TFRecord shards and image folders, their order, resume, bad input.

Every example's index is written into x[0] (scaled by 1/1000), so a stream's batches can
be checked against `stream_order`, the NumPy statement of the order. The 2-worker test
runs tests/stream_worker.py twice (interrupted mid-epoch, then resumed) and compares the
weights with an in-memory run of `read_all`'s arrays in `global_batches`' order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from builders import tiny_model, tiny_step

from composeloop.cluster import local_tf_configs
from composeloop.engine import compile_step, run_loop
from composeloop.errors import DataError
from composeloop.launch import free_ports
from composeloop.parts import datafiles, streams
from composeloop.parts.images import png_bytes
from composeloop.parts.to_tfrecord import main as to_tfrecord

COUNTS = (7, 13, 9, 11, 10, 12, 8, 14, 6, 10)  # 100 examples in 10 shards of uneven size


def examples(count: int, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, features)).astype(np.float32)
    x[:, 0] = np.arange(count) / 1000  # the example's index
    return x, rng.integers(0, classes, count).astype(np.int32)


def write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for features, label in zip(x, y, strict=True):
            record = {
                "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.serialize_tensor(features).numpy()])),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=record)).SerializeToString())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Ten shards in sorted order: shard i holds the next COUNTS[i] examples."""
    directory = tmp_path_factory.mktemp("shards")
    x, y = examples(sum(COUNTS))
    for index, (start, count) in enumerate(zip(np.cumsum((0, *COUNTS[:-1])), COUNTS, strict=True)):
        write(directory / f"part-{index:02d}.tfrecord", x[start : start + count], y[start : start + count])
    return directory


@pytest.fixture(scope="module")
def files(shards) -> datafiles.Files:
    return datafiles.tfrecord_files(str(shards / "part-*.tfrecord"))


def indices(dataset) -> list[list[int]]:
    return [[int(round(v)) for v in batch["x"].numpy()[:, 0] * 1000] for batch in dataset]


def test_interleave_order_is_tf_datas_parallel_deterministic_interleave():
    counts = [3, 0, 5, 1, 4, 2]
    inputs = tf.data.Dataset.from_tensor_slices(tf.constant(counts, tf.int64))
    read = inputs.enumerate().interleave(
        lambda i, n: tf.data.Dataset.range(n).map(lambda r: (i, r)),
        cycle_length=3,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    assert [(int(i), int(r)) for i, r in read] == streams.interleave_order(counts, 3)


def test_files_are_counted_and_an_epoch_reads_them_in_stream_order(files):
    assert (files.examples, files.counts, files.example_shape, files.num_classes) == (100, COUNTS, (4,), 3)
    x, y = streams.read_all(files)
    np.testing.assert_array_equal(np.round(x[:, 0] * 1000), np.arange(100))
    epoch_2 = streams.stream(files, 16, seed=5, epoch=2)
    assert int(epoch_2.cardinality()) == 7
    order = streams.stream_order(files, seed=5, epoch=2)
    assert sorted(order) == list(range(100)) and list(order) != sorted(order)
    assert indices(epoch_2) == [list(order[i : i + 16]) for i in range(0, 100, 16)]
    assert indices(streams.stream(files, 16, seed=5, epoch=2)) == indices(epoch_2)  # a pure function
    assert indices(streams.stream(files, 16, seed=5, epoch=3)) != indices(epoch_2)
    # A resume skips the batches already trained on and reads the rest exactly.
    assert indices(streams.stream(files, 16, seed=5, epoch=2).skip(4)) == indices(epoch_2)[4:]
    batch = next(iter(epoch_2))
    np.testing.assert_array_equal(batch["x"].numpy(), x[order[:16]])
    np.testing.assert_array_equal(batch["y"].numpy(), y[order[:16]])


def test_sharding_by_file_needs_a_file_per_worker(files):
    assert streams.sharding(files, 1) == ""
    assert streams.sharding(files, 4) == "data: 10 files sharded by FILE over 4 workers (each reads its own)"
    assert streams.sharding(files, 12).startswith("data: 10 file(s) for 12 workers: sharded by DATA")
    # Over FILE sharding each worker reads whole files of its own, together every example once.
    mine = [set(streams.stream_order(files, 1, 0, workers=3, worker=w)) for w in range(3)]
    assert set.union(*mine) == set(range(100)) and sum(map(len, mine)) == 100
    starts = np.concatenate([[0], np.cumsum(COUNTS)])
    for shard in range(10):
        owners = [w for w in range(3) if starts[shard] in mine[w]]
        assert len(owners) == 1 and set(range(starts[shard], starts[shard + 1])) <= mine[owners[0]]


def test_the_converter_writes_shuffled_shards_that_read_back_as_the_npz(tmp_path, capsys):
    x, y = examples(30)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    to_tfrecord([str(tmp_path / "d.npz"), str(tmp_path / "out"), "--shards", "4", "--seed", "3"])
    assert capsys.readouterr().out.splitlines() == [
        f"train: 4 shard(s) in {tmp_path / 'out'}",
        f"val: 4 shard(s) in {tmp_path / 'out'}",
    ]
    written = datafiles.tfrecord_files(str(tmp_path / "out" / "train-*.tfrecord"))
    assert written.paths[0].endswith("train-00000-of-00004.tfrecord") and written.counts == (8, 8, 7, 7)
    read_x, read_y = streams.read_all(written)
    order = np.random.default_rng(3).permutation(30)  # shuffled before sharding
    np.testing.assert_array_equal(read_x, x[order])
    np.testing.assert_array_equal(read_y, y[order])
    with pytest.raises(SystemExit) as exited:
        to_tfrecord([str(tmp_path / "d.npz"), str(tmp_path / "out")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"composeloop.parts.to_tfrecord: error: {tmp_path / 'out' / 'train-00000-of-00004.tfrecord'} already "
        "exists; write the shards into an empty directory"
    )


def test_an_image_folder_reads_one_class_per_sorted_subfolder(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in (("zebra", 2), ("ant", 3)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for index in range(count):
            (tmp_path / "images" / name / f"{index}.png").write_bytes(
                png_bytes(rng.integers(0, 255, (6, 5, 3), np.uint8))
            )
    (tmp_path / "images" / "ant" / "notes.txt").write_text("not an image")
    files = datafiles.image_files(tmp_path / "images", image_size=(4, 4))
    assert (files.num_classes, files.example_shape, files.labels) == (2, (4, 4, 3), (0, 0, 0, 1, 1))
    batch = next(iter(streams.stream(files, 5, seed=1, epoch=0)))
    order = streams.stream_order(files, seed=1, epoch=0)
    np.testing.assert_array_equal(batch["y"].numpy(), np.array(files.labels)[order])
    assert (
        batch["x"].shape == (5, 4, 4, 3)
        and 0.0 <= float(tf.reduce_min(batch["x"])) <= float(tf.reduce_max(batch["x"])) <= 1.0
    )


def _not_tfrecord(directory: Path) -> str:
    (directory / "a.tfrecord").write_text("these are not records")
    return "is not a TFRecord file"


def _wrong_dtype(directory: Path) -> str:
    write(directory / "a.tfrecord", np.zeros((2, 3), np.float64), np.zeros(2, np.int32))
    return "record 'x' has dtype float64; expected float32 or uint8"


def _shapes_differ(directory: Path) -> str:
    write(directory / "a.tfrecord", *examples(3))
    write(directory / "b.tfrecord", *examples(3, features=5))
    return "holds x of shape (5,) float32, but"


def _not_examples(directory: Path) -> str:
    with tf.io.TFRecordWriter(str(directory / "a.tfrecord")) as writer:
        writer.write(b"raw bytes, not an Example")
    return "records are not x/y examples"


def _negative_label(directory: Path) -> str:
    write(directory / "a.tfrecord", examples(3)[0], np.array([0, -1, 2], np.int32))
    return "holds a negative label (-1)"


@pytest.mark.parametrize("make", [_not_tfrecord, _wrong_dtype, _shapes_differ, _not_examples, _negative_label])
def test_bad_files_are_one_data_error_naming_the_file(tmp_path, make):
    expected = make(tmp_path)
    with pytest.raises(DataError) as raised:
        datafiles.tfrecord_files(str(tmp_path / "*.tfrecord"))
    message = str(raised.value)
    assert message.startswith("data.files: ") and expected in message and "\n" not in message
    assert str(tmp_path) in message


def test_missing_files_and_folders_without_classes_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^data.files: no file matches '.*nothing-\*.tfrecord'$"):
        datafiles.tfrecord_files(str(tmp_path / "nothing-*.tfrecord"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(png_bytes(np.zeros((2, 2), np.uint8)))
    with pytest.raises(DataError, match=r"^data.directory: .*flat has no class subfolders"):
        datafiles.image_files(tmp_path / "flat")
    (tmp_path / "flat" / "cats").mkdir()
    with pytest.raises(DataError, match=r"^data.directory: .*cats holds no .bmp/.gif"):
        datafiles.image_files(tmp_path / "flat")


def test_a_record_of_another_shape_deep_in_a_file_names_the_file(tmp_path):
    x, y = examples(4)
    path = tmp_path / "a.tfrecord"
    write(path, x, y)
    files = datafiles.tfrecord_files(str(path))
    with tf.io.TFRecordWriter(str(path)) as writer:  # now the third record has 5 features
        for features in (x[0], x[1], np.zeros(5, np.float32), x[3]):
            record = {
                "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.serialize_tensor(features).numpy()])),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=record)).SerializeToString())
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"data.files:.*{path}.*holds x of shape.*5.*not.*4"):
        list(streams.stream(files, 4, shuffle=False))


@pytest.mark.slow
def test_two_workers_read_disjoint_files_resume_mid_epoch_and_equal_the_in_memory_run(tmp_path, shards, files):
    script = Path(__file__).with_name("stream_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}

    def run_workers(stop_at: int) -> list[str]:
        configs = local_tf_configs(free_ports(2))
        workers = [
            subprocess.Popen(
                [sys.executable, str(script), str(shards / "part-*.tfrecord"), str(tmp_path), str(stop_at)],
                env={**env, "TF_CONFIG": config},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for config in configs
        ]
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], outputs
        return outputs

    steps = [len(streams.global_batches(files, 8, 0, epoch, workers=2)) for epoch in (0, 1)]
    assert steps[0] > 9  # the workers' shares differ (uneven shards): the longer one sets an epoch's steps
    first = run_workers(stop_at=9)
    assert all("data: 10 files sharded by FILE over 2 workers (each reads its own)" in out for out in first)
    assert [f"worker {w}: interrupted at epoch 0 batch 9 step 9" in first[w] for w in (0, 1)] == [True, True], first
    seen = [json.loads((tmp_path / f"seen-{w}.json").read_text()) for w in (0, 1)]
    assert seen == [list(streams.stream_order(files, 0, 0, workers=2, worker=w)) for w in (0, 1)]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 100
    second = run_workers(stop_at=0)
    done = f"completed at epoch 2 batch 0 step {sum(steps)}"
    assert [f"worker {w}: {done}" in second[w] for w in (0, 1)] == [True, True], second

    # The in-memory run: the same examples in the same global batches, one replica.
    x, y = streams.read_all(files)
    model = tiny_model(features=4, classes=3)
    program = compile_step(tiny_step(model))
    signature = {"x": tf.TensorSpec((None, 4), tf.float32), "y": tf.TensorSpec((None,), tf.int32)}

    def in_memory(epoch: int) -> tf.data.Dataset:
        order = streams.global_batches(files, 8, 0, epoch, workers=2)
        return tf.data.Dataset.from_generator(
            lambda: ({"x": x[b], "y": y[b]} for b in order), output_signature=signature
        )

    run_loop(program, in_memory, epochs=2)
    with np.load(tmp_path / "weights.npz") as saved:
        for index, expected in enumerate(model.get_weights()):
            np.testing.assert_allclose(saved[f"arr_{index}"], expected, rtol=1e-5, atol=1e-6)
