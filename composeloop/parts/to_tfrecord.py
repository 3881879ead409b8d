"""`python -m composeloop.parts.to_tfrecord DATA.npz OUT_DIR [--shards N] [--seed S]`: .npz to TFRecord shards.

This module owns writing x/y records (the format `composeloop.parts.datafiles` reads): an
MNIST-style .npz (x_train, y_train, x_test, y_test, checked as `data=npz` checks it) becomes
``OUT_DIR/train-00000-of-0000N.tfrecord`` ... and ``val-...`` shards of the test split.
Examples are shuffled by `seed` before they are cut into shards, so that each shard holds
a mix of classes: a stream reads a few shards at a time, and its mixing within an epoch
comes from that. Features are written as the float32 arrays `data=npz` would train on
(uint8 pixels already scaled to [0, 1]), so a run over the shards equals the in-memory run
of the same examples in the same order. Each shard is written under a temporary name and
renamed when complete; shards already in OUT_DIR are never overwritten.

Example:
  python -m composeloop.parts.to_tfrecord mnist.npz shards/ --shards 16
  python -m composeloop data=tfrecord data.files='shards/train-*.tfrecord'
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from composeloop.errors import DataError
from composeloop.parts.data import load_npz


def shard_names(prefix: str, shards: int) -> list[str]:
    """``prefix-00000-of-0000N.tfrecord`` for each shard."""
    return [f"{prefix}-{index:05d}-of-{shards:05d}.tfrecord" for index in range(shards)]


def write_shards(x: np.ndarray, y: np.ndarray, directory: Path, prefix: str, shards: int, seed: int = 0) -> list[Path]:
    """Writes `x`, `y` shuffled by `seed` into `shards` TFRecord files of nearly equal size.

    Raises:
      ValueError: `shards` < 1 or more shards than examples.
      DataError: shards with this prefix are already there.
    """
    import tensorflow as tf

    if not 1 <= shards <= len(x):
        raise ValueError(f"shards must be between 1 and the {len(x)} examples, got {shards}")
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in shard_names(prefix, shards)]
    present = sorted(directory.glob(f"{prefix}-*.tfrecord"))  # of any shard count: one glob would read both
    if present:
        raise DataError(f"{present[0]} already exists; write the shards into an empty directory")
    order = np.random.default_rng(seed).permutation(len(x))
    for path, indices in zip(paths, np.array_split(order, shards), strict=True):
        partial = path.with_name(path.name + ".partial")
        with tf.io.TFRecordWriter(str(partial)) as writer:
            for index in indices:
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "x": tf.train.Feature(
                                bytes_list=tf.train.BytesList(value=[tf.io.serialize_tensor(x[index]).numpy()])
                            ),
                            "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y[index])])),
                        }
                    )
                )
                writer.write(example.SerializeToString())
        os.replace(partial, path)
    return paths


def convert(npz: str | Path, directory: str | Path, shards: int = 8, seed: int = 0) -> dict[str, list[Path]]:
    """An MNIST-style .npz as ``train-*`` and ``val-*`` TFRecord shards in `directory`.

    Example:
      >>> convert("mnist.npz", "shards", shards=16)["train"][0].name
      'train-00000-of-00016.tfrecord'
    """
    data = load_npz(npz)
    directory = Path(directory)
    return {
        "train": write_shards(data.x_train, data.y_train, directory, "train", shards, seed),
        "val": write_shards(data.x_val, data.y_val, directory, "val", min(shards, len(data.x_val)), seed),
    }


def _load_tensorflow_quietly() -> None:
    """TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) goes to stderr before any log
    level applies: file descriptor 2 points at /dev/null while it loads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m composeloop.parts.to_tfrecord`; bad input is one line, exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m composeloop.parts.to_tfrecord", description="Write an .npz as TFRecord shards."
    )
    parser.add_argument("npz", help="an MNIST-style .npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("directory", help="where the train-*.tfrecord and val-*.tfrecord shards go")
    parser.add_argument("--shards", type=int, default=8, help="training shards (at least one per worker)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle before sharding")
    options = parser.parse_args(argv)
    _load_tensorflow_quietly()
    try:
        written = convert(options.npz, options.directory, options.shards, options.seed)
    except (DataError, ValueError) as error:
        print(f"composeloop.parts.to_tfrecord: error: {error}", file=sys.stderr)
        sys.exit(2)
    for split, paths in written.items():
        print(f"{split}: {len(paths)} shard(s) in {options.directory}")


if __name__ == "__main__":
    main()
